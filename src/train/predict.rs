//! Batch scoring (`segstream predict`): replay a history up to a time, score
//! every customer with a model directory, one row per customer. It uses the
//! serving path itself: `CustomerState::record`, the model's `Featurizer`,
//! and `score::LoadedModel` (the same validation and session code as the
//! pipeline).

use std::collections::BTreeMap;
use std::io::Write;

use crate::config::Config;
use crate::event::Event;
use crate::model::ModelFiles;
use crate::score::{LoadedModel, ScoreError};
use crate::state::CustomerState;

/// Why batch scoring failed.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The model directory could not be read.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The model was refused or a batch could not be scored.
    #[error(transparent)]
    Score(#[from] ScoreError),
    /// Features could not be computed.
    #[error(transparent)]
    Features(#[from] crate::features::FeatureError),
    /// The output could not be written.
    #[error("writing predictions: {0}")]
    Io(#[from] std::io::Error),
}

impl crate::error::Classify for PredictError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            PredictError::Model(e) => crate::error::Classify::class(e),
            PredictError::Score(e) => crate::error::Classify::class(e),
            PredictError::Features(e) => crate::error::Classify::class(e),
            PredictError::Io(e) => crate::error::Classify::class(e),
        }
    }
}

/// One customer's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The customer.
    pub customer_id: String,
    /// The most probable segment.
    pub segment: String,
    /// Probability per segment, in the model's segment order.
    pub probabilities: Vec<f32>,
    /// Probability of a purchase within the horizon.
    pub purchase_probability: f32,
    /// Probability of no activity within the horizon.
    pub churn_probability: f32,
    /// Expected spend within the horizon, minor units.
    pub predicted_spend: f32,
    /// Why the model chose `segment` (see `SegmentChange.reasons`); empty
    /// when the model gives no explanation output.
    pub reasons: Vec<crate::event::proto::Reason>,
    /// The explanation's baseline (`SegmentChange.reasons_baseline`).
    pub reasons_baseline: f32,
}

/// Predictions and what produced them.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    /// Model version.
    pub model_version: String,
    /// Segment names, in probability order.
    pub segments: Vec<String>,
    /// One per customer, by customer id.
    pub rows: Vec<Prediction>,
    /// Events at or before the cut time that were replayed.
    pub events_used: u64,
    /// Events after the cut time (ignored).
    pub events_after: u64,
    /// Customers inactive for longer than `train.lookback` before the cut
    /// time (outside the population the model was trained on).
    pub outside_lookback: usize,
}

/// Replays `events` up to `as_of_ms` and scores every customer seen.
pub fn predict(
    config: &Config,
    model: &ModelFiles,
    events: impl IntoIterator<Item = Event>,
    as_of_ms: i64,
) -> Result<Predictions, PredictError> {
    let limits = config.state.limits().state;
    let loaded = LoadedModel::load(&config.score, model, limits, 1)?;
    let mut states: BTreeMap<String, CustomerState> = BTreeMap::new();
    let mut out = Predictions {
        model_version: loaded.version.to_string(),
        segments: loaded.segments.to_vec(),
        ..Default::default()
    };
    for e in events {
        if e.event_time_ms > as_of_ms {
            out.events_after += 1;
            continue;
        }
        out.events_used += 1;
        states
            .entry(e.customer_id.clone())
            .or_default()
            .record(&e, limits);
    }
    // The trainer takes examples only of customers active within
    // train.lookback before each cut time; customers silent for longer are
    // outside what the model has seen. Say so instead of scoring silently.
    let lookback_ms = crate::units::millis(config.train.lookback);
    let outside = states
        .values()
        .filter(|s| as_of_ms.saturating_sub(s.last_event_ms) > lookback_ms)
        .count();
    out.outside_lookback = outside;
    if outside > 0 {
        tracing::warn!(
            customers = outside,
            of = states.len(),
            lookback_days = config.train.lookback.as_secs() / 86_400,
            "Some customers were inactive for longer than train.lookback before --as-of; the model \
             was trained only on customers active within it, so their scores are extrapolations \
             (raise train.lookback and retrain to cover them)."
        );
    }
    let mut ids: Vec<&String> = states.keys().collect();
    if loaded.dynamic_events() {
        // Similar history lengths in one batch: the model is given only as
        // many events as the batch's longest history (rows are put back in
        // customer order below).
        ids.sort_by_key(|id| states.get(*id).map_or(0, |s| s.recent().len()));
    }
    for chunk in ids.chunks(config.score.max_batch.max(1)) {
        let refs: Vec<&CustomerState> = chunk.iter().filter_map(|id| states.get(*id)).collect();
        let batch = loaded.featurizer.featurize(&refs, as_of_ms)?;
        let scores = loaded.score_on(0, &batch)?;
        for (i, id) in chunk.iter().enumerate() {
            let probs = scores.segment_probs(i).to_vec();
            let best = crate::decide::argmax(&probs).unwrap_or(0);
            let (mut reasons, reasons_baseline) =
                crate::decide::explain(scores.contributions(i), best, None, config.decide.reasons);
            if let Some(state) = states.get(*id) {
                crate::decide::with_values(
                    &mut reasons,
                    &loaded.featurizer.customer_features(state, as_of_ms),
                    &loaded.featurizer.spec().normalization,
                );
            }
            out.rows.push(Prediction {
                customer_id: (*id).clone(),
                // `best` indexes the model's own segment list.
                segment: out.segments.get(best).cloned().unwrap_or_default(),
                probabilities: probs,
                purchase_probability: scores.outputs.purchase_probability[i],
                churn_probability: scores.outputs.churn_probability[i],
                predicted_spend: scores.outputs.predicted_spend[i],
                reasons,
                reasons_baseline,
            });
        }
    }
    out.rows.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
    Ok(out)
}

/// Output file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Comma-separated, with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
    /// Parquet (zstd), the CSV's columns with types (needs `--out`).
    Parquet,
}

/// The reasons of a row as one text field: `feature:+0.123;feature:-0.045`.
pub fn reasons_text(r: &Prediction) -> String {
    r.reasons
        .iter()
        .map(|x| format!("{}:{:+.4}", x.feature, x.contribution))
        .collect::<Vec<_>>()
        .join(";")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `p` as CSV: customer_id, segment, `p_<segment>`…, the three metrics,
/// model_version.
pub fn write_csv(p: &Predictions, w: &mut dyn Write) -> std::io::Result<()> {
    let mut header = vec!["customer_id".to_string(), "segment".to_string()];
    header.extend(p.segments.iter().map(|s| format!("p_{s}")));
    header.extend(
        [
            "purchase_probability",
            "churn_probability",
            "predicted_spend",
            "model_version",
            "reasons",
        ]
        .map(String::from),
    );
    writeln!(w, "{}", header.join(","))?;
    for r in &p.rows {
        let mut f = vec![csv_field(&r.customer_id), csv_field(&r.segment)];
        f.extend(r.probabilities.iter().map(|v| format!("{v:.6}")));
        f.push(format!("{:.6}", r.purchase_probability));
        f.push(format!("{:.6}", r.churn_probability));
        f.push(format!("{:.2}", r.predicted_spend));
        f.push(csv_field(&p.model_version));
        f.push(csv_field(&reasons_text(r)));
        writeln!(w, "{}", f.join(","))?;
    }
    Ok(())
}

/// Writes `p` as NDJSON, one object per customer.
pub fn write_ndjson(p: &Predictions, w: &mut dyn Write) -> std::io::Result<()> {
    for r in &p.rows {
        let probs: serde_json::Map<String, serde_json::Value> = p
            .segments
            .iter()
            .zip(&r.probabilities)
            .map(|(s, v)| (s.clone(), serde_json::json!(v)))
            .collect();
        let line = serde_json::json!({
            "customer_id": r.customer_id,
            "segment": r.segment,
            "probabilities": probs,
            "purchase_probability": r.purchase_probability,
            "churn_probability": r.churn_probability,
            "predicted_spend": r.predicted_spend,
            "model_version": p.model_version,
            "reasons": r.reasons.iter().map(|x| serde_json::json!({
                "feature": x.feature,
                "contribution": x.contribution,
            })).collect::<Vec<_>>(),
            "reasons_baseline": r.reasons_baseline,
        });
        writeln!(w, "{line}")?;
    }
    Ok(())
}

/// Writes `p` as Parquet: the CSV's columns, probabilities as float32.
pub fn write_parquet(p: &Predictions, file: std::fs::File) -> Result<(), PredictError> {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;

    let parquet_error =
        |e: parquet::errors::ParquetError| PredictError::Io(std::io::Error::other(e.to_string()));
    let text = |f: &dyn Fn(&Prediction) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(p.rows.iter().map(f)))
    };
    let float = |f: &dyn Fn(&Prediction) -> f32| -> ArrayRef {
        Arc::new(Float32Array::from_iter_values(p.rows.iter().map(f)))
    };
    let mut fields = vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("segment", DataType::Utf8, false),
    ];
    let mut columns = vec![
        text(&|r| r.customer_id.clone()),
        text(&|r| r.segment.clone()),
    ];
    for (k, name) in p.segments.iter().enumerate() {
        fields.push(Field::new(format!("p_{name}"), DataType::Float32, false));
        columns.push(float(&|r| {
            r.probabilities.get(k).copied().unwrap_or(f32::NAN)
        }));
    }
    for (name, get) in [
        (
            "purchase_probability",
            &(|r: &Prediction| r.purchase_probability) as &dyn Fn(&Prediction) -> f32,
        ),
        ("churn_probability", &|r: &Prediction| r.churn_probability),
        ("predicted_spend", &|r: &Prediction| r.predicted_spend),
    ] {
        fields.push(Field::new(name, DataType::Float32, false));
        columns.push(float(get));
    }
    fields.push(Field::new("model_version", DataType::Utf8, false));
    columns.push(text(&|_| p.model_version.clone()));
    fields.push(Field::new("reasons", DataType::Utf8, false));
    columns.push(text(&reasons_text));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| PredictError::Io(std::io::Error::other(e.to_string())))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(parquet_error)?;
    writer.write(&batch).map_err(parquet_error)?;
    writer.close().map_err(parquet_error)?;
    Ok(())
}
