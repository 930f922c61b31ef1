//! Erasure markers: what is left of an erased customer, so that an erasure
//! holds as of its time and not only as of the moment it was applied.
//!
//! A request (`segstream forget`) erases everything of a customer up to its
//! time T. The input may lag behind the request (a catch-up after an
//! outage, a restart, a rebalance, a backfill): events of that customer
//! produced before the request can be read after it. The partition store
//! therefore keeps a marker (customer → T) after dropping the state, and
//! drops every later-read event stamped at or before T (by event time or by
//! the Kafka record's timestamp), while events after T start a new state.
//! The marker goes to the changelog like a state (so a restore or a
//! rebalance keeps it) under its own key, and is removed once no input
//! record from before T can still arrive (`privacy.erasure_retention`, the
//! input topics' retention).
//!
//! This module owns the marker's changelog key and value; the store keeps
//! the markers and applies them.

use prost::Message as _;

use super::codec::CodecError;
use crate::event::proto::ErasureMarker;

/// The changelog key prefix of erasure markers. Customer ids never hold a
/// control character (validated at ingest), so no customer's state key
/// starts with it.
pub const MARKER_KEY_PREFIX: &str = "\u{0}erased:";

/// The changelog key of `id`'s erasure marker.
pub fn marker_key(id: &str) -> String {
    let mut key = String::with_capacity(MARKER_KEY_PREFIX.len() + id.len());
    key.push_str(MARKER_KEY_PREFIX);
    key.push_str(id);
    key
}

/// The customer whose marker a changelog key names (`None`: a state key).
pub fn marker_of(key: &str) -> Option<&str> {
    key.strip_prefix(MARKER_KEY_PREFIX)
}

/// The changelog value of a marker erasing up to `through_ms`.
pub fn encode_marker(through_ms: i64) -> Vec<u8> {
    ErasureMarker {
        erased_through_ms: through_ms,
    }
    .encode_to_vec()
}

/// The time a marker's changelog value erases up to.
pub fn decode_marker(value: &[u8]) -> Result<i64, CodecError> {
    ErasureMarker::decode(value)
        .map(|m| m.erased_through_ms)
        .map_err(|e| CodecError::Protobuf(format!("erasure marker: {e}")))
}

/// Whether an event at `event_time_ms`, read from a record stamped
/// `record_time_ms` (absent when the record had no timestamp, or offline),
/// is covered by an erasure up to `through_ms`: it happened, or was
/// produced, at or before the request.
pub fn covers(through_ms: i64, event_time_ms: i64, record_time_ms: Option<i64>) -> bool {
    event_time_ms <= through_ms || record_time_ms.is_some_and(|t| t >= 0 && t <= through_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_keys_never_meet_customer_keys() {
        let key = marker_key("cust-1");
        assert_eq!(marker_of(&key), Some("cust-1"));
        assert_eq!(marker_of("cust-1"), None);
        // The prefix holds a control character, which ingest refuses in ids.
        assert!(MARKER_KEY_PREFIX.chars().any(char::is_control));
    }

    #[test]
    fn marker_values_round_trip_and_refuse_garbage() {
        for t in [0, 1, 1_765_000_000_000, i64::MAX] {
            assert_eq!(decode_marker(&encode_marker(t)).unwrap(), t);
        }
        assert!(decode_marker(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn an_erasure_covers_what_happened_or_was_produced_before_it() {
        let t = 1_000;
        assert!(covers(t, 1_000, None), "at T");
        assert!(
            covers(t, 900, Some(2_000)),
            "happened before, produced after"
        );
        assert!(covers(t, 5_000, Some(1_000)), "produced before");
        assert!(!covers(t, 1_001, None), "after T, offline");
        assert!(!covers(t, 1_001, Some(1_001)), "after T");
        assert!(!covers(t, 2_000, Some(-1)), "no record timestamp");
    }
}
