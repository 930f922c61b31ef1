//! Features: customer states as of a time → one Arrow `RecordBatch` holding
//! the model inputs → tensor views over the very same buffers.
//!
//! This is the ONLY place features are computed. The pipeline calls it on
//! live state, the trainer on replayed state; what a model sees in training
//! is by construction what it sees in serving. The [`FeatureSpec`] written
//! into each model's manifest pins every constant used here, and
//! [`Featurizer::new`] refuses a spec this build cannot produce.
//!
//! Columns (batch dimension B dynamic), all fixed-size lists so that each
//! column's values are one contiguous buffer:
//!
//! | column | type | logical shape |
//! | --- | --- | --- |
//! | `event_kind` | int64 | [B, N] |
//! | `event_category` | int64 | [B, N] |
//! | `event_numeric` | float32 | [B, N, E] |
//! | `event_text` | int64 | [B, N, T] |
//! | `event_mask` | float32 | [B, N] |
//! | `customer_features` | float32 | [B, F] |
//!
//! Events are ordered most recent first; padding (kind 0, mask 0) follows.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::types::{Float32Type, Int64Type};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::state::text::TOKENIZER;
use crate::state::{kind, CustomerState, StateLimits, WINDOW_DAYS};

/// Version of the feature definitions in this module. Bump it whenever a
/// feature's meaning changes; models trained on another version are refused.
mod catalogue;
pub mod classical;

pub use catalogue::{customer_feature_names, customer_feature_value};
pub use classical::Classical;

pub const FEATURE_VERSION: u32 = 4;
/// Numeric values per event (E): log age, log amount, rating, log dwell,
/// hour of day (sin, cos), and (version 3) the log gaps to the previous
/// event and to the previous event of the same kind (-1: none).
pub const EVENT_NUMERIC_DIM: usize = 8;
/// Aggregates per window.
const PER_WINDOW: usize = 7;
/// Lifetime purchase features (after the windows, recency and tenure).
pub const LIFETIME_DIM: usize = 8;
/// Where the lifetime purchase features start.
pub const LIFETIME_AT: usize = WINDOW_DAYS.len() * PER_WINDOW + 3;
/// Classical inputs (version 4, see [`classical`]), after the lifetime
/// features.
pub const CLASSICAL_DIM: usize = 4;
/// Where the classical inputs start.
pub const CLASSICAL_AT: usize = LIFETIME_AT + LIFETIME_DIM;
/// Customer features (F).
pub const CUSTOMER_DIM: usize = CLASSICAL_AT + CLASSICAL_DIM;

/// Names of the model inputs, in order.
pub const INPUT_NAMES: [&str; 6] = [
    "event_kind",
    "event_category",
    "event_numeric",
    "event_text",
    "event_mask",
    "customer_features",
];

/// Scales of the log-normalized values: `ln(1 + x) / scale`, so typical
/// values land in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// Event age in seconds.
    pub age_log_scale: f32,
    /// Amounts in minor units.
    pub amount_log_scale: f32,
    /// Dwell in seconds.
    pub dwell_log_scale: f32,
    /// Event counts per window.
    pub count_log_scale: f32,
    /// Spend per window in minor units.
    pub spend_log_scale: f32,
    /// Recency and tenure in days.
    pub days_log_scale: f32,
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            age_log_scale: (1.0f32 + 90.0 * 86_400.0).ln(),
            amount_log_scale: (1.0f32 + 1_000_000.0).ln(),
            dwell_log_scale: (1.0f32 + 3_600.0).ln(),
            count_log_scale: (1.0f32 + 1_000.0).ln(),
            spend_log_scale: (1.0f32 + 10_000_000.0).ln(),
            days_log_scale: (1.0f32 + 3_650.0).ln(),
        }
    }
}

/// Everything a model must agree on with the featurizer; stored in the
/// model manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// [`FEATURE_VERSION`] of the code that produced the training data.
    pub version: u32,
    /// Events per customer (N).
    pub max_events: usize,
    /// Numeric values per event (E).
    pub event_numeric_dim: usize,
    /// Text token ids per event (T).
    pub text_tokens: usize,
    /// Customer features (F).
    pub customer_dim: usize,
    /// Kind ids 0..kind_vocab (0 = padding).
    pub kind_vocab: usize,
    /// Category ids 0..category_buckets (0 = padding / none).
    pub category_buckets: u32,
    /// Text token ids 0..text_buckets (0 = padding).
    pub text_buckets: u32,
    /// Tokenizer name.
    pub tokenizer: String,
    /// Window lengths of the customer features, in days.
    pub windows_days: Vec<u32>,
    /// Normalization constants.
    pub normalization: Normalization,
    /// Parameters of the classical inputs, fitted at training (none: the
    /// inputs are "not defined", -1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classical: Option<Classical>,
}

impl FeatureSpec {
    /// The spec this build produces for the given state sizes.
    pub fn for_state(limits: StateLimits) -> Self {
        FeatureSpec {
            version: FEATURE_VERSION,
            max_events: limits.max_events,
            event_numeric_dim: EVENT_NUMERIC_DIM,
            text_tokens: limits.text_tokens,
            customer_dim: CUSTOMER_DIM,
            kind_vocab: usize::from(kind::COUNT),
            category_buckets: 1024,
            text_buckets: 16_384,
            tokenizer: TOKENIZER.to_string(),
            windows_days: WINDOW_DAYS.to_vec(),
            normalization: Normalization::default(),
            classical: None,
        }
    }

    /// Whether a model of `other` takes the same input layout: every field
    /// but the classical parameters, which change with each fit (inputs of
    /// `self` are recomputed with `other`'s parameters to score it).
    pub fn same_layout(&self, other: &FeatureSpec) -> bool {
        FeatureSpec {
            classical: None,
            ..self.clone()
        } == FeatureSpec {
            classical: None,
            ..other.clone()
        }
    }
}

/// A spec this build cannot produce, or a batch that does not match it.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// The spec asks for something this build does not compute.
    #[error("feature spec not supported: {0}")]
    Unsupported(String),
    /// Arrow refused the arrays (an internal error).
    #[error("building the feature batch: {0}")]
    Arrow(#[from] ArrowError),
    /// A batch lacks a column or has a different layout.
    #[error("feature batch does not match the spec: {0}")]
    Layout(String),
}

impl crate::error::Classify for FeatureError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            // A model's feature spec this build cannot compute.
            FeatureError::Unsupported(_) => crate::error::ErrorClass::BadInput,
            // The featurizer's own batch does not fit its own spec.
            FeatureError::Arrow(_) | FeatureError::Layout(_) => crate::error::ErrorClass::Internal,
        }
    }
}

/// Turns customer states into model input batches under one spec.
#[derive(Debug, Clone)]
pub struct Featurizer {
    spec: FeatureSpec,
    schema: SchemaRef,
}

impl Featurizer {
    /// Checks that `spec` can be produced from states kept with `limits`.
    pub fn new(spec: FeatureSpec, limits: StateLimits) -> Result<Self, FeatureError> {
        let mut why = Vec::new();
        if spec.version != FEATURE_VERSION {
            why.push(format!(
                "version {} (this build computes version {FEATURE_VERSION})",
                spec.version
            ));
        }
        if spec.event_numeric_dim != EVENT_NUMERIC_DIM {
            why.push(format!(
                "event_numeric_dim {} (this build: {EVENT_NUMERIC_DIM})",
                spec.event_numeric_dim
            ));
        }
        if spec.customer_dim != CUSTOMER_DIM {
            why.push(format!(
                "customer_dim {} (this build: {CUSTOMER_DIM})",
                spec.customer_dim
            ));
        }
        if spec.kind_vocab != usize::from(kind::COUNT) {
            why.push(format!(
                "kind_vocab {} (this build: {})",
                spec.kind_vocab,
                kind::COUNT
            ));
        }
        if spec.tokenizer != TOKENIZER {
            why.push(format!(
                "tokenizer {:?} (this build: {TOKENIZER:?})",
                spec.tokenizer
            ));
        }
        if spec.windows_days != WINDOW_DAYS {
            why.push(format!(
                "windows_days {:?} (this build: {WINDOW_DAYS:?})",
                spec.windows_days
            ));
        }
        if spec.max_events == 0 || spec.max_events > limits.max_events {
            why.push(format!(
                "max_events {} (the state keeps {}; raise state.max_events)",
                spec.max_events, limits.max_events
            ));
        }
        if spec.text_tokens > limits.text_tokens {
            why.push(format!(
                "text_tokens {} (the state keeps {}; raise state.text_tokens)",
                spec.text_tokens, limits.text_tokens
            ));
        }
        if spec.category_buckets < 2 || !(2..=65_536).contains(&spec.text_buckets) {
            why.push(
                "category_buckets must be at least 2 and text_buckets between 2 and 65536"
                    .to_string(),
            );
        }
        let n = &spec.normalization;
        for (name, v) in [
            ("age_log_scale", n.age_log_scale),
            ("amount_log_scale", n.amount_log_scale),
            ("dwell_log_scale", n.dwell_log_scale),
            ("count_log_scale", n.count_log_scale),
            ("spend_log_scale", n.spend_log_scale),
            ("days_log_scale", n.days_log_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                why.push(format!("normalization.{name} must be a positive number"));
            }
        }
        if let Some(c) = &spec.classical {
            why.extend(c.problems());
        }
        if !why.is_empty() {
            return Err(FeatureError::Unsupported(why.join("; ")));
        }
        let schema = Arc::new(schema(&spec));
        Ok(Featurizer { spec, schema })
    }

    /// The spec in force.
    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// The Arrow schema of every batch.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Features of `states` as of `as_of_ms`, one row per state in order.
    /// Recent events after `as_of_ms` are ignored; aggregates count whole days
    /// up to and including the day of `as_of_ms`.
    pub fn featurize(
        &self,
        states: &[&CustomerState],
        as_of_ms: i64,
    ) -> Result<RecordBatch, FeatureError> {
        let s = &self.spec;
        let (b, n, e, t, f) = (
            states.len(),
            s.max_events,
            EVENT_NUMERIC_DIM,
            s.text_tokens,
            CUSTOMER_DIM,
        );
        let mut kinds = vec![0i64; b * n];
        let mut cats = vec![0i64; b * n];
        let mut numeric = vec![0f32; b * n * e];
        let mut text = vec![0i64; b * n * t];
        let mut mask = vec![0f32; b * n];
        let mut customer = vec![0f32; b * f];
        for (row, state) in states.iter().enumerate() {
            self.fill_events(
                state,
                as_of_ms,
                &mut kinds[row * n..(row + 1) * n],
                &mut cats[row * n..(row + 1) * n],
                &mut numeric[row * n * e..(row + 1) * n * e],
                &mut text[row * n * t..(row + 1) * n * t],
                &mut mask[row * n..(row + 1) * n],
            );
            self.fill_customer(state, as_of_ms, &mut customer[row * f..(row + 1) * f]);
        }
        let columns: Vec<ArrayRef> = vec![
            list_i64(kinds, n)?,
            list_i64(cats, n)?,
            list_f32(numeric, n * e)?,
            list_i64(text, n * t)?,
            list_f32(mask, n)?,
            list_f32(customer, f)?,
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn fill_events(
        &self,
        state: &CustomerState,
        as_of_ms: i64,
        kinds: &mut [i64],
        cats: &mut [i64],
        numeric: &mut [f32],
        text: &mut [i64],
        mask: &mut [f32],
    ) {
        let s = &self.spec;
        let norm = &s.normalization;
        let as_of_s = as_of_ms.div_euclid(1000);
        let tokens: Vec<&[u16]> = state.recent_tokens().collect();
        let visible: Vec<(&crate::state::RecentEvent, &[u16])> = state
            .recent()
            .iter()
            .zip(tokens)
            .filter(|(ev, _)| i64::from(ev.time_s) <= as_of_s)
            .collect();
        // Gaps (seconds) to the previous event and to the previous event of
        // the same kind, oldest first: the sequence's time structure
        // (regularity, bursts), which ages alone give only as differences.
        let mut gaps = Vec::with_capacity(visible.len());
        let mut last_any: Option<u32> = None;
        let mut last_of_kind = [None::<u32>; kind::COUNT as usize + 1];
        for (ev, _) in &visible {
            let slot = usize::from(ev.kind).min(last_of_kind.len() - 1);
            let gap = |prev: Option<u32>| prev.map(|p| ev.time_s.saturating_sub(p) as f32);
            gaps.push((gap(last_any), gap(last_of_kind[slot])));
            last_any = Some(ev.time_s);
            last_of_kind[slot] = Some(ev.time_s);
        }
        let newest_first = visible.iter().zip(&gaps).rev().take(s.max_events);
        let log_gap = |g: Option<f32>| g.map_or(-1.0, |g| g.ln_1p() / norm.age_log_scale);
        for (i, ((ev, toks), &(gap_any, gap_kind))) in newest_first.enumerate() {
            kinds[i] = i64::from(ev.kind);
            cats[i] = bucket(ev.category, s.category_buckets);
            mask[i] = 1.0;
            let age_s = (as_of_s - i64::from(ev.time_s)).max(0) as f32;
            let hour = ((ev.time_s % 86_400) as f32) / 3_600.0;
            let angle = hour / 24.0 * std::f32::consts::TAU;
            let row = &mut numeric[i * EVENT_NUMERIC_DIM..(i + 1) * EVENT_NUMERIC_DIM];
            row[0] = age_s.ln_1p() / norm.age_log_scale;
            row[1] = (ev.amount_minor as f32).ln_1p() / norm.amount_log_scale;
            row[2] = f32::from(ev.rating) / 5.0;
            row[3] = f32::from(ev.dwell_s).ln_1p() / norm.dwell_log_scale;
            row[4] = angle.sin();
            row[5] = angle.cos();
            row[6] = log_gap(gap_any);
            row[7] = log_gap(gap_kind);
            for (j, tok) in toks.iter().take(s.text_tokens).enumerate() {
                text[i * s.text_tokens + j] = bucket(u32::from(*tok), s.text_buckets);
            }
        }
    }

    /// The customer features of one customer as of `as_of_ms` (the
    /// `customer_features` row [`Featurizer::featurize`] gives it).
    pub fn customer_features(&self, state: &CustomerState, as_of_ms: i64) -> Vec<f32> {
        let mut out = vec![0.0; CUSTOMER_DIM];
        self.fill_customer(state, as_of_ms, &mut out);
        out
    }

    fn fill_customer(&self, state: &CustomerState, as_of_ms: i64, out: &mut [f32]) {
        let norm = &self.spec.normalization;
        let agg = state.aggregates(as_of_ms);
        let count = |c: u64| (c as f32).ln_1p() / norm.count_log_scale;
        for (w, win) in agg.windows.iter().enumerate() {
            let o = &mut out[w * PER_WINDOW..(w + 1) * PER_WINDOW];
            o[0] = count(win.browse);
            o[1] = count(win.cart_adds);
            o[2] = count(win.purchases);
            o[3] = count(win.reviews);
            o[4] = (win.spend_minor as f32).ln_1p() / norm.spend_log_scale;
            o[5] = win.distinct_categories as f32 / 64.0;
            o[6] = win.mean_rating.map_or(0.0, |r| r as f32 / 5.0);
        }
        let days = |d: f64| (d as f32).ln_1p() / norm.days_log_scale;
        let base = WINDOW_DAYS.len() * PER_WINDOW;
        // Never purchased is -1, apart from every real recency (>= 0).
        out[base] = agg.days_since_purchase.map_or(-1.0, days);
        out[base + 1] = days(agg.days_since_event);
        out[base + 2] = days(agg.tenure_days);
        fill_lifetime(state, as_of_ms, norm, &mut out[LIFETIME_AT..CLASSICAL_AT]);
        classical::fill(self.spec.classical.as_ref(), norm, out);
    }
}

/// Lifetime purchase features (version 2): what BTYD models use (x, t_x,
/// T, spend), plus the regularity of the gaps between purchases, which
/// Poisson-based models miss. -1 marks "not defined" (never purchased, or
/// too few purchases for a gap), apart from every real value (>= 0).
fn fill_lifetime(state: &CustomerState, as_of_ms: i64, norm: &Normalization, out: &mut [f32]) {
    let lt = &state.lifetime;
    let days = |d: f64| (d.max(0.0) as f32).ln_1p() / norm.days_log_scale;
    let to_days = |ms: i64| ms.max(0) as f64 / crate::state::DAY_MS as f64;
    if lt.purchases == 0 {
        out[..LIFETIME_DIM].fill(-1.0);
        out[0] = 0.0;
        out[1] = 0.0;
        return;
    }
    let x = f64::from(lt.purchases);
    // T: days since the first purchase; t_x: first to last purchase.
    let age = to_days(as_of_ms - lt.first_purchase_ms);
    let span = to_days(state.last_purchase_ms - lt.first_purchase_ms);
    out[0] = (x as f32).ln_1p() / norm.count_log_scale;
    out[1] = (lt.spend_minor as f32).ln_1p() / norm.spend_log_scale;
    out[2] = ((lt.spend_minor as f64 / x) as f32).ln_1p() / norm.amount_log_scale;
    out[3] = days(age);
    out[4] = days(span);
    // Purchases per 30 days of purchase history (at least a day).
    out[5] = ((x * 30.0 / age.max(1.0)) as f32).ln_1p() / norm.count_log_scale;
    out[6] = lt.mean_gap_days(state.last_purchase_ms).map_or(-1.0, days);
    // Regularity: coefficient of variation of the gaps between the
    // purchases in the recent window (two gaps at least), capped at 3:
    // 0 is clockwork, about 1 is Poisson-like, above is bursty.
    out[7] = -1.0;
    let as_of_s = as_of_ms.div_euclid(1000);
    let times: Vec<f64> = state
        .recent()
        .iter()
        .filter(|e| e.kind == kind::PURCHASE && i64::from(e.time_s) <= as_of_s)
        .map(|e| f64::from(e.time_s))
        .collect();
    if times.len() >= 3 {
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        if mean > 0.0 {
            let var = gaps.iter().map(|g| (g - mean) * (g - mean)).sum::<f64>() / n;
            out[7] = (var.sqrt() / mean).min(3.0) as f32 / 3.0;
        }
    }
}

fn bucket(hash: u32, buckets: u32) -> i64 {
    if hash == 0 {
        0
    } else {
        1 + i64::from(hash % (buckets - 1))
    }
}

fn schema(spec: &FeatureSpec) -> Schema {
    let (n, e, t, f) = (
        spec.max_events,
        EVENT_NUMERIC_DIM,
        spec.text_tokens,
        CUSTOMER_DIM,
    );
    let list = |name: &str, item: DataType, shape: &[usize]| {
        let len: usize = shape.iter().product();
        let shape_text = shape
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Field::new(
            name,
            DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), len as i32),
            false,
        )
        .with_metadata(HashMap::from([("shape".to_string(), shape_text)]))
    };
    Schema::new(vec![
        list("event_kind", DataType::Int64, &[n]),
        list("event_category", DataType::Int64, &[n]),
        list("event_numeric", DataType::Float32, &[n, e]),
        list("event_text", DataType::Int64, &[n, t]),
        list("event_mask", DataType::Float32, &[n]),
        list("customer_features", DataType::Float32, &[f]),
    ])
}

fn list_i64(values: Vec<i64>, size: usize) -> Result<ArrayRef, ArrowError> {
    let field = Arc::new(Field::new("item", DataType::Int64, false));
    Ok(Arc::new(FixedSizeListArray::try_new(
        field,
        size as i32,
        Arc::new(Int64Array::from(values)),
        None,
    )?))
}

fn list_f32(values: Vec<f32>, size: usize) -> Result<ArrayRef, ArrowError> {
    let field = Arc::new(Field::new("item", DataType::Float32, false));
    Ok(Arc::new(FixedSizeListArray::try_new(
        field,
        size as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )?))
}

/// The values of one input tensor, borrowed from the batch's Arrow buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TensorData<'a> {
    /// int64 values.
    I64(&'a [i64]),
    /// float32 values.
    F32(&'a [f32]),
}

/// One model input as ONNX Runtime wants it: a name, a shape and a
/// contiguous row-major buffer. Borrowed from the `RecordBatch`, no copy.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorView<'a> {
    /// Input name.
    pub name: &'a str,
    /// Shape, batch first.
    pub shape: Vec<i64>,
    /// The values.
    pub data: TensorData<'a>,
}

/// An event input cut to fewer events than the batch holds (see
/// [`trim_events`]): the values it owns.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedData {
    /// int64 values.
    I64(Vec<i64>),
    /// float32 values.
    F32(Vec<f32>),
}

/// One input tensor with its own values.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedTensor {
    /// Shape, batch first.
    pub shape: Vec<i64>,
    /// The values.
    pub data: OwnedData,
}

impl OwnedTensor {
    /// A view of it under `name`.
    pub fn view<'a>(&'a self, name: &'a str) -> TensorView<'a> {
        TensorView {
            name,
            shape: self.shape.clone(),
            data: match &self.data {
                OwnedData::I64(v) => TensorData::I64(v),
                OwnedData::F32(v) => TensorData::F32(v),
            },
        }
    }
}

/// The event inputs of `views` (from [`tensors`]) cut to the events of the
/// batch's longest history, for a model whose event dimension is dynamic:
/// events are newest first with padding after them, so the rows keep every
/// real event and lose only padding, which the model masks out anyway.
/// Aligned with `views` (`None` for an input left as it is); `None` when
/// there is nothing to cut (the longest history fills the event
/// dimension). At least one event is kept (an empty history: one masked
/// event).
pub fn trim_events(views: &[TensorView<'_>]) -> Option<Vec<Option<OwnedTensor>>> {
    let mask = views.iter().find(|v| v.name == "event_mask")?;
    let (TensorData::F32(mask_values), [rows, n]) = (mask.data, mask.shape.as_slice()) else {
        return None;
    };
    let (rows, n) = (usize::try_from(*rows).ok()?, usize::try_from(*n).ok()?);
    if rows == 0 || n == 0 {
        return None;
    }
    let longest = mask_values
        .chunks_exact(n)
        .map(|row| row.iter().rposition(|m| *m != 0.0).map_or(0, |j| j + 1))
        .max()
        .unwrap_or(0)
        .max(1);
    if longest >= n {
        return None;
    }
    fn cut<T: Copy>(data: &[T], n: usize, longest: usize, inner: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(data.len() / n.max(1) * longest);
        for row in data.chunks_exact(n * inner) {
            out.extend_from_slice(&row[..longest * inner]);
        }
        out
    }
    Some(
        views
            .iter()
            .map(|v| {
                if !v.name.starts_with("event_") || v.shape.len() < 2 || v.shape[1] as usize != n {
                    return None;
                }
                let inner = v.shape[2..].iter().product::<i64>() as usize;
                let mut shape = v.shape.clone();
                shape[1] = longest as i64;
                let data = match v.data {
                    TensorData::I64(d) => OwnedData::I64(cut(d, n, longest, inner)),
                    TensorData::F32(d) => OwnedData::F32(cut(d, n, longest, inner)),
                };
                Some(OwnedTensor { shape, data })
            })
            .collect(),
    )
}

/// The model inputs of a feature batch, in [`INPUT_NAMES`] order.
pub fn tensors(batch: &RecordBatch) -> Result<Vec<TensorView<'_>>, FeatureError> {
    let rows = batch.num_rows() as i64;
    let schema = batch.schema_ref();
    let mut out = Vec::with_capacity(INPUT_NAMES.len());
    for name in INPUT_NAMES {
        let (idx, field) = schema
            .column_with_name(name)
            .ok_or_else(|| FeatureError::Layout(format!("no column {name}")))?;
        let shape_text = field
            .metadata()
            .get("shape")
            .ok_or_else(|| FeatureError::Layout(format!("column {name} has no shape")))?;
        let mut shape = vec![rows];
        for d in shape_text.split(',') {
            shape.push(
                d.parse()
                    .map_err(|_| FeatureError::Layout(format!("bad shape {shape_text:?}")))?,
            );
        }
        let list = batch
            .column(idx)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .ok_or_else(|| FeatureError::Layout(format!("{name} is not a fixed-size list")))?;
        let values = list.values();
        let expected: i64 = shape.iter().product();
        if list.offset() != 0 || values.len() as i64 != expected {
            return Err(FeatureError::Layout(format!(
                "{name} holds {} values, shape {shape:?} needs {expected}",
                values.len()
            )));
        }
        let data = if let Some(a) = values
            .as_any()
            .downcast_ref::<arrow_array::PrimitiveArray<Int64Type>>()
        {
            TensorData::I64(a.values().as_ref())
        } else if let Some(a) = values
            .as_any()
            .downcast_ref::<arrow_array::PrimitiveArray<Float32Type>>()
        {
            TensorData::F32(a.values().as_ref())
        } else {
            return Err(FeatureError::Layout(format!(
                "{name} has an unsupported type"
            )));
        };
        out.push(TensorView { name, shape, data });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
