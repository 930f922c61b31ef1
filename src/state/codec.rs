//! The changelog value: the versioned binary encoding of a customer's state
//! (`proto/segstream/v1/state.proto`).
//!
//! Encoding goes through prost. Decoding runs for every customer of a
//! partition on restore, so it reads the protobuf wire format directly: the
//! packed columns go into reusable per-thread scratch buffers and from
//! there straight into the state's own vectors, with no intermediate
//! message and no allocation per column. It follows protobuf's rules
//! (packed or unpacked repeated fields, unknown fields skipped, a repeated
//! sub-message merged, the last scalar wins), and property tests check it
//! against prost's decoding of the same bytes.

use std::cell::RefCell;

#[cfg(test)]
use prost::Message as _;

use super::wire::{
    expect, fixeds, float, int64, message, string, u32_of, u64_of, uint, varints, Wire, LEN,
};
use super::{CustomerState, DayBucket, Decision, Lifetime, ProductSketch, RecentEvent, Snapshot};
#[cfg(test)]
use crate::event::proto;

/// The layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;

/// Why a changelog value could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Not a protobuf `CustomerStateRecord`.
    #[error("undecodable state record: {0}")]
    Protobuf(String),
    /// Written by a layout this build does not know.
    #[error("state record has format_version {0}, this build reads {FORMAT_VERSION}")]
    Version(u32),
    /// Columns of different lengths or other inconsistencies.
    #[error("inconsistent state record: {0}")]
    Inconsistent(&'static str),
}

impl crate::error::Classify for CodecError {
    /// A record that does not decode is bad data, whoever wrote it.
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::BadInput
    }
}

impl From<super::wire::WireError> for CodecError {
    fn from(e: super::wire::WireError) -> Self {
        CodecError::Protobuf(e.0)
    }
}

/// Encodes a state as a changelog value: the bytes prost writes for the
/// `CustomerStateRecord` of the state (fields in number order, defaults
/// left out, repeated fields packed), written straight from the state
/// without building the message first (which copied every column and
/// string: the changelog encoding runs for every changed customer in
/// every cycle). Tested byte for byte against prost's encoding.
pub fn encode(state: &CustomerState) -> Vec<u8> {
    thread_local! {
        static NESTED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let mut out = Vec::with_capacity(64 + state.recent.len() * 24 + state.days.len() * 16);
    NESTED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut nested) => write_record(state, &mut out, &mut nested),
        Err(_) => write_record(state, &mut out, &mut Vec::new()),
    });
    out
}

fn write_record(state: &CustomerState, out: &mut Vec<u8>, nested: &mut Vec<u8>) {
    use super::wire::out::{message, scalar};
    scalar(out, 1, u64::from(FORMAT_VERSION));
    scalar(out, 2, state.first_seen_ms as u64);
    scalar(out, 3, state.last_event_ms as u64);
    scalar(out, 4, state.last_purchase_ms as u64);
    message(out, 5, nested, |w| write_recent(state, w));
    message(out, 6, nested, |w| write_days(state, w));
    message(out, 7, nested, |w| write_decision(&state.decision, w));
    scalar(out, 8, state.duplicates);
    scalar(out, 9, u64::from(state.lifetime.purchases));
    scalar(out, 10, state.lifetime.spend_minor);
    scalar(out, 11, state.lifetime.first_purchase_ms as u64);
    if !state.lifetime.products.is_empty() {
        super::wire::out::packed_fixed64(out, 12, state.lifetime.products.0.iter().copied());
    }
    for snapshot in &state.snapshots {
        message(out, 13, nested, |w| write_snapshot(snapshot, w));
    }
    scalar(out, 14, state.snapshot_through_ms as u64);
}

fn write_snapshot(s: &Snapshot, w: &mut Vec<u8>) {
    use super::wire::out::{float, scalar, string};
    scalar(w, 1, s.cut_ms as u64);
    string(w, 2, &s.model_version);
    string(w, 3, &s.segment);
    float(w, 4, s.purchase_probability);
    float(w, 5, s.churn_probability);
    float(w, 6, s.predicted_spend);
    scalar(w, 7, u64::from(s.purchased_before));
    scalar(w, 8, u64::from(s.scored));
    string(w, 9, &s.role);
    super::wire::out::bytes(w, 10, s.feature_bins.iter().copied());
}

fn write_recent(state: &CustomerState, w: &mut Vec<u8>) {
    use super::wire::out::{bytes, packed_fixed64, packed_varints};
    let recent = &state.recent;
    // The list is sorted, so deltas are never negative; the first one is
    // the absolute time.
    let deltas = recent.iter().scan(0u32, |prev, e| {
        let d = u64::from(e.time_s - *prev);
        *prev = e.time_s;
        Some(d)
    });
    packed_varints(w, 1, deltas);
    packed_fixed64(w, 2, recent.iter().map(|e| e.id_hash));
    bytes(w, 3, recent.iter().map(|e| e.kind));
    bytes(w, 4, recent.iter().map(|e| e.rating));
    packed_varints(w, 5, recent.iter().map(|e| u64::from(e.category)));
    packed_varints(w, 6, recent.iter().map(|e| u64::from(e.amount_minor)));
    packed_varints(w, 7, recent.iter().map(|e| u64::from(e.dwell_s)));
    packed_varints(w, 8, state.token_counts.iter().map(|c| u64::from(*c)));
    packed_varints(w, 9, state.tokens.iter().map(|t| u64::from(*t)));
    packed_varints(w, 10, recent.iter().map(|e| u64::from(e.product)));
}

fn write_days(state: &CustomerState, w: &mut Vec<u8>) {
    use super::wire::out::{packed_fixed64, packed_varints};
    let days = &state.days;
    // Sorted and after 1970 (validated on input): deltas are never negative.
    let deltas = days.iter().scan(0i64, |prev, d| {
        let delta = i64::from(d.day) - *prev;
        *prev = i64::from(d.day);
        Some(u64::from(u32::try_from(delta.max(0)).unwrap_or(u32::MAX)))
    });
    packed_varints(w, 1, deltas);
    packed_varints(w, 2, days.iter().map(|d| u64::from(d.browse)));
    packed_varints(w, 3, days.iter().map(|d| u64::from(d.cart_adds)));
    packed_varints(w, 4, days.iter().map(|d| u64::from(d.purchases)));
    packed_varints(w, 5, days.iter().map(|d| u64::from(d.reviews)));
    packed_varints(w, 6, days.iter().map(|d| u64::from(d.spend_minor)));
    packed_varints(w, 7, days.iter().map(|d| u64::from(d.rating_sum)));
    packed_fixed64(w, 8, days.iter().map(|d| d.category_bits));
}

fn write_decision(d: &Decision, w: &mut Vec<u8>) {
    use super::wire::out::{float, packed_floats, scalar, string};
    string(w, 1, &d.segment);
    packed_floats(w, 2, &d.scores);
    string(w, 3, &d.model_version);
    scalar(w, 4, d.decided_at_ms as u64);
    scalar(w, 5, d.next_review_ms as u64);
    scalar(w, 6, d.since_ms as u64);
    float(w, 7, d.purchase_probability);
    float(w, 8, d.churn_probability);
    float(w, 9, d.predicted_spend);
    scalar(w, 10, d.as_of_ms as u64);
    scalar(w, 11, u64::from(d.risk_flags));
}

/// The same encoding through prost's generated message: the reference
/// [`encode`] is tested against.
#[cfg(test)]
pub(crate) fn encode_with_prost(state: &CustomerState) -> Vec<u8> {
    let mut recent = proto::RecentEvents::default();
    let mut prev = 0u32;
    for e in &state.recent {
        // The list is sorted, so deltas are never negative; the first one is
        // the absolute time.
        recent.time_s_delta.push(u64::from(e.time_s - prev));
        prev = e.time_s;
        recent.id_hash.push(e.id_hash);
        recent.kind.push(e.kind);
        recent.rating.push(e.rating);
        recent.category_hash.push(e.category);
        recent.product_hash.push(e.product);
        recent.amount_minor.push(u64::from(e.amount_minor));
        recent.dwell_s.push(u32::from(e.dwell_s));
    }
    recent.token_count = state.token_counts.iter().map(|c| u32::from(*c)).collect();
    recent.tokens = state.tokens.iter().map(|t| u32::from(*t)).collect();
    let mut days = proto::DayBuckets::default();
    let mut prev_day = 0i64;
    for d in &state.days {
        // Sorted and after 1970 (validated on input): deltas are never negative.
        let delta = i64::from(d.day) - prev_day;
        days.day_delta
            .push(u32::try_from(delta.max(0)).unwrap_or(u32::MAX));
        prev_day = i64::from(d.day);
        days.browse.push(u32::from(d.browse));
        days.cart_adds.push(u32::from(d.cart_adds));
        days.purchases.push(u32::from(d.purchases));
        days.reviews.push(u32::from(d.reviews));
        days.spend_minor.push(u64::from(d.spend_minor));
        days.rating_sum.push(d.rating_sum);
        days.category_bits.push(d.category_bits);
    }
    let dec = &state.decision;
    proto::CustomerStateRecord {
        format_version: FORMAT_VERSION,
        first_seen_ms: state.first_seen_ms,
        last_event_ms: state.last_event_ms,
        last_purchase_ms: state.last_purchase_ms,
        recent: Some(recent),
        days: Some(days),
        decision: Some(proto::Decision {
            segment: dec.segment.clone(),
            scores: dec.scores.clone(),
            model_version: dec.model_version.clone(),
            decided_at_ms: dec.decided_at_ms,
            next_review_ms: dec.next_review_ms,
            since_ms: dec.since_ms,
            purchase_probability: dec.purchase_probability,
            churn_probability: dec.churn_probability,
            predicted_spend: dec.predicted_spend,
            as_of_ms: dec.as_of_ms,
            risk_flags: u32::from(dec.risk_flags),
        }),
        duplicates: state.duplicates,
        lifetime_purchases: state.lifetime.purchases,
        lifetime_spend_minor: state.lifetime.spend_minor,
        first_purchase_ms: state.lifetime.first_purchase_ms,
        purchased_products: if state.lifetime.products.is_empty() {
            Vec::new()
        } else {
            state.lifetime.products.0.to_vec()
        },
        snapshots: state.snapshots.iter().map(snapshot_to_proto).collect(),
        snapshot_through_ms: state.snapshot_through_ms,
    }
    .encode_to_vec()
}

#[cfg(test)]
pub(crate) fn snapshot_to_proto(s: &Snapshot) -> proto::Snapshot {
    proto::Snapshot {
        cut_ms: s.cut_ms,
        model_version: s.model_version.clone(),
        segment: s.segment.clone(),
        purchase_probability: s.purchase_probability,
        churn_probability: s.churn_probability,
        predicted_spend: s.predicted_spend,
        purchased_before: s.purchased_before,
        scored: s.scored,
        role: s.role.clone(),
        feature_bins: s.feature_bins.clone(),
    }
}

#[cfg(test)]
pub(crate) fn snapshot_of_proto(s: &proto::Snapshot) -> Snapshot {
    Snapshot {
        cut_ms: s.cut_ms,
        model_version: s.model_version.clone(),
        segment: s.segment.clone(),
        purchase_probability: s.purchase_probability,
        churn_probability: s.churn_probability,
        predicted_spend: s.predicted_spend,
        purchased_before: s.purchased_before,
        scored: s.scored,
        role: s.role.clone(),
        feature_bins: s.feature_bins.clone(),
    }
}

/// Decodes a changelog value.
pub fn decode(bytes: &[u8]) -> Result<CustomerState, CodecError> {
    thread_local! {
        static SCRATCH: RefCell<Columns> = RefCell::new(Columns::default());
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cols) => decode_with(bytes, &mut cols),
        // Not reentrant in practice; a fresh buffer keeps it correct anyway.
        Err(_) => decode_with(bytes, &mut Columns::default()),
    })
}

/// What the store indexes a customer by, read from a changelog value
/// without decoding it: the restore keeps values encoded until a customer
/// is first used, and still needs these for the retention and review-timer
/// indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peek {
    /// The customer's latest event time (ms).
    pub last_event_ms: i64,
    /// When the customer is next reviewed (ms; 0: no timer).
    pub next_review_ms: i64,
}

/// Reads the indexed times and checks the record's version and outer
/// framing, skipping the columns: a fraction of a full [`decode`]. A value
/// whose columns are corrupt passes here and fails at its decode.
pub fn peek(bytes: &[u8]) -> Result<Peek, CodecError> {
    let mut version = 0u32;
    let mut p = Peek::default();
    let mut w = Wire { buf: bytes };
    while !w.is_empty() {
        let (field, wire) = w.key()?;
        match field {
            1 => version = uint(&mut w, wire)? as u32,
            3 => p.last_event_ms = int64(&mut w, wire)?,
            7 => {
                let mut d = message(&mut w, wire)?;
                while !d.is_empty() {
                    let (field, wire) = d.key()?;
                    match field {
                        5 => p.next_review_ms = int64(&mut d, wire)?,
                        _ => d.skip(field, wire, 1)?,
                    }
                }
            }
            _ => w.skip(field, wire, 0)?,
        }
    }
    if version != FORMAT_VERSION && version != 1 {
        return Err(CodecError::Version(version));
    }
    Ok(p)
}

fn decode_with(bytes: &[u8], cols: &mut Columns) -> Result<CustomerState, CodecError> {
    cols.clear();
    let mut s = Scalars::default();
    parse_record(bytes, &mut s, cols)?;
    assemble(&s, cols)
}

/// The scalar fields of a record (strings borrowed from the input).
#[derive(Debug, Default, PartialEq)]
struct Scalars<'a> {
    format_version: u32,
    first_seen_ms: i64,
    last_event_ms: i64,
    last_purchase_ms: i64,
    duplicates: u64,
    lifetime_purchases: u32,
    lifetime_spend_minor: u64,
    first_purchase_ms: i64,
    segment: &'a str,
    model_version: &'a str,
    decided_at_ms: i64,
    next_review_ms: i64,
    since_ms: i64,
    purchase_probability: f32,
    churn_probability: f32,
    predicted_spend: f32,
    as_of_ms: i64,
    risk_flags: u32,
    snapshot_through_ms: i64,
}

/// The repeated fields of a record, as on the wire (reused between records).
#[derive(Debug, Default, PartialEq)]
struct Columns {
    time_s_delta: Vec<u64>,
    id_hash: Vec<u64>,
    kind: Vec<u8>,
    rating: Vec<u8>,
    category_hash: Vec<u32>,
    amount_minor: Vec<u64>,
    dwell_s: Vec<u32>,
    token_count: Vec<u32>,
    tokens: Vec<u32>,
    product_hash: Vec<u32>,
    day_delta: Vec<u32>,
    browse: Vec<u32>,
    cart_adds: Vec<u32>,
    purchases: Vec<u32>,
    reviews: Vec<u32>,
    spend_minor: Vec<u64>,
    rating_sum: Vec<u32>,
    category_bits: Vec<u64>,
    scores: Vec<f32>,
    purchased_products: Vec<u64>,
    /// Snapshots (few, and rare: parsed whole).
    snapshots: Vec<Snapshot>,
}

impl Columns {
    fn clear(&mut self) {
        for v in [
            &mut self.time_s_delta,
            &mut self.id_hash,
            &mut self.amount_minor,
            &mut self.spend_minor,
            &mut self.category_bits,
            &mut self.purchased_products,
        ] {
            v.clear();
        }
        for v in [
            &mut self.category_hash,
            &mut self.dwell_s,
            &mut self.token_count,
            &mut self.tokens,
            &mut self.product_hash,
            &mut self.day_delta,
            &mut self.browse,
            &mut self.cart_adds,
            &mut self.purchases,
            &mut self.reviews,
            &mut self.rating_sum,
        ] {
            v.clear();
        }
        self.kind.clear();
        self.rating.clear();
        self.scores.clear();
        self.snapshots.clear();
    }
}

/// Parses a `CustomerStateRecord`.
fn parse_record<'a>(
    bytes: &'a [u8],
    s: &mut Scalars<'a>,
    c: &mut Columns,
) -> Result<(), CodecError> {
    let mut w = Wire { buf: bytes };
    while !w.is_empty() {
        let (field, wire) = w.key()?;
        match field {
            1 => s.format_version = uint(&mut w, wire)? as u32,
            2 => s.first_seen_ms = int64(&mut w, wire)?,
            3 => s.last_event_ms = int64(&mut w, wire)?,
            4 => s.last_purchase_ms = int64(&mut w, wire)?,
            5 => parse_recent(message(&mut w, wire)?, c)?,
            6 => parse_days(message(&mut w, wire)?, c)?,
            7 => parse_decision(message(&mut w, wire)?, s, c)?,
            8 => s.duplicates = uint(&mut w, wire)?,
            9 => s.lifetime_purchases = uint(&mut w, wire)? as u32,
            10 => s.lifetime_spend_minor = uint(&mut w, wire)?,
            11 => s.first_purchase_ms = int64(&mut w, wire)?,
            12 => fixeds(&mut w, wire, &mut c.purchased_products)?,
            13 => c.snapshots.push(parse_snapshot(message(&mut w, wire)?)?),
            14 => s.snapshot_through_ms = int64(&mut w, wire)?,
            _ => w.skip(field, wire, 0)?,
        }
    }
    Ok(())
}

fn parse_recent(mut w: Wire<'_>, c: &mut Columns) -> Result<(), CodecError> {
    while !w.is_empty() {
        let (field, wire) = w.key()?;
        match field {
            1 => varints(&mut w, wire, &mut c.time_s_delta, u64_of)?,
            2 => fixeds(&mut w, wire, &mut c.id_hash)?,
            3 | 4 => {
                // `bytes`: the last occurrence wins.
                expect(wire, LEN)?;
                let value = w.len_delimited()?;
                let to = if field == 3 {
                    &mut c.kind
                } else {
                    &mut c.rating
                };
                to.clear();
                to.extend_from_slice(value);
            }
            5 => varints(&mut w, wire, &mut c.category_hash, u32_of)?,
            6 => varints(&mut w, wire, &mut c.amount_minor, u64_of)?,
            7 => varints(&mut w, wire, &mut c.dwell_s, u32_of)?,
            8 => varints(&mut w, wire, &mut c.token_count, u32_of)?,
            9 => varints(&mut w, wire, &mut c.tokens, u32_of)?,
            10 => varints(&mut w, wire, &mut c.product_hash, u32_of)?,
            _ => w.skip(field, wire, 1)?,
        }
    }
    Ok(())
}

fn parse_days(mut w: Wire<'_>, c: &mut Columns) -> Result<(), CodecError> {
    while !w.is_empty() {
        let (field, wire) = w.key()?;
        match field {
            1 => varints(&mut w, wire, &mut c.day_delta, u32_of)?,
            2 => varints(&mut w, wire, &mut c.browse, u32_of)?,
            3 => varints(&mut w, wire, &mut c.cart_adds, u32_of)?,
            4 => varints(&mut w, wire, &mut c.purchases, u32_of)?,
            5 => varints(&mut w, wire, &mut c.reviews, u32_of)?,
            6 => varints(&mut w, wire, &mut c.spend_minor, u64_of)?,
            7 => varints(&mut w, wire, &mut c.rating_sum, u32_of)?,
            8 => fixeds(&mut w, wire, &mut c.category_bits)?,
            _ => w.skip(field, wire, 1)?,
        }
    }
    Ok(())
}

fn parse_snapshot(mut w: Wire<'_>) -> Result<Snapshot, CodecError> {
    let mut s = Snapshot::default();
    while !w.is_empty() {
        let (field, wire) = w.key()?;
        match field {
            1 => s.cut_ms = int64(&mut w, wire)?,
            2 => s.model_version = string(&mut w, wire)?.to_string(),
            3 => s.segment = string(&mut w, wire)?.to_string(),
            4 => s.purchase_probability = float(&mut w, wire)?,
            5 => s.churn_probability = float(&mut w, wire)?,
            6 => s.predicted_spend = float(&mut w, wire)?,
            7 => s.purchased_before = uint(&mut w, wire)? != 0,
            8 => s.scored = uint(&mut w, wire)? != 0,
            9 => s.role = string(&mut w, wire)?.to_string(),
            10 => {
                expect(wire, LEN)?;
                s.feature_bins = w.len_delimited()?.to_vec();
            }
            _ => w.skip(field, wire, 1)?,
        }
    }
    Ok(s)
}

fn parse_decision<'a>(
    mut w: Wire<'a>,
    s: &mut Scalars<'a>,
    c: &mut Columns,
) -> Result<(), CodecError> {
    while !w.is_empty() {
        let (field, wire) = w.key()?;
        match field {
            1 => s.segment = string(&mut w, wire)?,
            2 => fixeds(&mut w, wire, &mut c.scores)?,
            3 => s.model_version = string(&mut w, wire)?,
            4 => s.decided_at_ms = int64(&mut w, wire)?,
            5 => s.next_review_ms = int64(&mut w, wire)?,
            6 => s.since_ms = int64(&mut w, wire)?,
            7 => s.purchase_probability = float(&mut w, wire)?,
            8 => s.churn_probability = float(&mut w, wire)?,
            9 => s.predicted_spend = float(&mut w, wire)?,
            10 => s.as_of_ms = int64(&mut w, wire)?,
            11 => s.risk_flags = uint(&mut w, wire)? as u32,
            _ => w.skip(field, wire, 1)?,
        }
    }
    Ok(())
}

/// Builds the state from a parsed record, checking that the columns fit
/// together and the values fit their fields.
fn assemble(s: &Scalars<'_>, c: &Columns) -> Result<CustomerState, CodecError> {
    if s.format_version != FORMAT_VERSION && s.format_version != 1 {
        return Err(CodecError::Version(s.format_version));
    }
    let n = c.time_s_delta.len();
    let recent_lengths = [
        c.id_hash.len(),
        c.kind.len(),
        c.rating.len(),
        c.category_hash.len(),
        c.amount_minor.len(),
        c.dwell_s.len(),
        c.token_count.len(),
    ];
    // Product hashes are absent in records written before products were kept.
    if recent_lengths.iter().any(|len| *len != n)
        || (!c.product_hash.is_empty() && c.product_hash.len() != n)
    {
        return Err(CodecError::Inconsistent(
            "recent-event columns differ in length",
        ));
    }
    let token_total: u64 = c.token_count.iter().map(|t| u64::from(*t)).sum();
    if token_total != c.tokens.len() as u64 || c.token_count.iter().any(|t| *t > 255) {
        return Err(CodecError::Inconsistent(
            "token counts do not match the tokens",
        ));
    }
    let out_of_range = || CodecError::Inconsistent("value out of range");
    let mut recent = Vec::with_capacity(n);
    let mut t = 0u32;
    for i in 0..n {
        let delta = u32::try_from(c.time_s_delta[i]).map_err(|_| out_of_range())?;
        t = t.checked_add(delta).ok_or_else(out_of_range)?;
        recent.push(RecentEvent {
            id_hash: c.id_hash[i],
            amount_minor: u32::try_from(c.amount_minor[i]).map_err(|_| out_of_range())?,
            time_s: t,
            category: c.category_hash[i],
            product: c.product_hash.get(i).copied().unwrap_or(0),
            dwell_s: u16::try_from(c.dwell_s[i]).unwrap_or(u16::MAX),
            kind: c.kind[i],
            rating: c.rating[i],
        });
    }
    let m = c.day_delta.len();
    let day_lengths = [
        c.browse.len(),
        c.cart_adds.len(),
        c.purchases.len(),
        c.reviews.len(),
        c.spend_minor.len(),
        c.rating_sum.len(),
        c.category_bits.len(),
    ];
    if day_lengths.iter().any(|len| *len != m) {
        return Err(CodecError::Inconsistent(
            "day-bucket columns differ in length",
        ));
    }
    let u16_of = |v: u32| u16::try_from(v).map_err(|_| out_of_range());
    let mut days = Vec::with_capacity(m);
    let mut day = 0i32;
    for i in 0..m {
        let delta = i32::try_from(c.day_delta[i]).map_err(|_| out_of_range())?;
        day = day.checked_add(delta).ok_or_else(out_of_range)?;
        days.push(DayBucket {
            day,
            spend_minor: u32::try_from(c.spend_minor[i]).map_err(|_| out_of_range())?,
            category_bits: c.category_bits[i],
            browse: u16_of(c.browse[i])?,
            cart_adds: u16_of(c.cart_adds[i])?,
            purchases: u16_of(c.purchases[i])?,
            reviews: u16_of(c.reviews[i])?,
            rating_sum: c.rating_sum[i],
        });
    }
    let lifetime = if s.format_version == 1 {
        lifetime_of_v1(&days, &recent, s.last_purchase_ms)
    } else {
        Lifetime {
            purchases: s.lifetime_purchases,
            spend_minor: s.lifetime_spend_minor,
            first_purchase_ms: s.first_purchase_ms,
            products: ProductSketch(match c.purchased_products.as_slice() {
                [] => [0; 4],
                [a, b, c, d] => [*a, *b, *c, *d],
                _ => {
                    return Err(CodecError::Inconsistent(
                        "purchased_products is not four words",
                    ))
                }
            }),
        }
    };
    let tokens = c
        .tokens
        .iter()
        .map(|t| u16::try_from(*t).map_err(|_| out_of_range()))
        .collect::<Result<_, _>>()?;
    Ok(CustomerState {
        first_seen_ms: s.first_seen_ms,
        last_event_ms: s.last_event_ms,
        last_purchase_ms: s.last_purchase_ms,
        recent,
        token_counts: c.token_count.iter().map(|t| *t as u8).collect(),
        tokens,
        days,
        decision: Decision {
            segment: s.segment.to_string(),
            scores: c.scores.clone(),
            model_version: s.model_version.to_string(),
            decided_at_ms: s.decided_at_ms,
            next_review_ms: s.next_review_ms,
            since_ms: s.since_ms,
            purchase_probability: s.purchase_probability,
            churn_probability: s.churn_probability,
            predicted_spend: s.predicted_spend,
            as_of_ms: s.as_of_ms,
            risk_flags: u8::try_from(s.risk_flags).map_err(|_| out_of_range())?,
        },
        duplicates: s.duplicates,
        lifetime,
        snapshots: c.snapshots.clone(),
        snapshot_through_ms: s.snapshot_through_ms,
    })
}

/// Lifetime statistics of a record written before they existed (format 1):
/// what the kept days and recent events still show (a best effort; exact
/// for purchases from then on).
fn lifetime_of_v1(days: &[DayBucket], recent: &[RecentEvent], last_purchase_ms: i64) -> Lifetime {
    let purchases: u32 = days.iter().map(|d| u32::from(d.purchases)).sum();
    let spend_minor: u64 = days.iter().map(|d| u64::from(d.spend_minor)).sum();
    let first_recent = recent
        .iter()
        .filter(|e| e.kind == crate::state::kind::PURCHASE)
        .map(|e| i64::from(e.time_s) * 1000)
        .min();
    let first_day = days
        .iter()
        .filter(|d| d.purchases > 0)
        .map(|d| i64::from(d.day) * crate::state::DAY_MS)
        .min();
    // The exact time when the earliest purchase day still has its event
    // in the recent window; else the start of that day.
    let first_purchase_ms = match (first_day, first_recent) {
        (Some(d), Some(r)) if r < d + crate::state::DAY_MS => r,
        (Some(d), _) => d,
        (None, r) => r.unwrap_or(0),
    };
    Lifetime {
        purchases: purchases.max(u32::from(last_purchase_ms > 0)),
        spend_minor,
        first_purchase_ms,
        // Format 1 kept the top line's product of recent purchases only.
        products: recent
            .iter()
            .filter(|e| e.kind == crate::state::kind::PURCHASE)
            .fold(ProductSketch::default(), |mut s, e| {
                s.insert(e.product);
                s
            }),
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
