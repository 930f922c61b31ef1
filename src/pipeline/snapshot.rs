//! `segstream segments snapshot`: every customer's current classification,
//! read from the current-membership topic (`output.current_topic`) to its
//! end with `read_committed`, written as NDJSON or Parquet for warehouses
//! and offline joins.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, BooleanArray, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Config, OutputFormat};
use crate::decide::SegmentChangeJson;
use crate::event::proto::{Membership, Reason, SegmentChange, Trigger};
use crate::telemetry::kafka_log::QuietContext;

/// Why a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No current-membership topic is configured.
    #[error("output.current_topic is empty: there is no current-membership topic to read")]
    NoCurrentTopic,
    /// The output file's name says no format.
    #[error("{0}: the file name must end in .parquet, .ndjson, .jsonl or .json")]
    UnknownFormat(std::path::PathBuf),
    /// The configuration could not be turned into a reader.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The topic's partitions could not be found.
    #[error(transparent)]
    Topic(#[from] crate::privacy::PrivacyError),
    /// A Kafka call failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// The topic was not read to its end in time.
    #[error("{topic} was not read to its end within {timeout:?} ({done} of {partitions} partitions done)")]
    Timeout {
        /// The topic.
        topic: String,
        /// The limit.
        timeout: Duration,
        /// Partitions read to their end.
        done: usize,
        /// Partitions in all.
        partitions: usize,
    },
    /// Writing the output file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Building or writing the Parquet file failed.
    #[error("writing {path}: {message}")]
    Parquet {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl crate::error::Classify for SnapshotError {
    fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            SnapshotError::NoCurrentTopic | SnapshotError::UnknownFormat(_) => ErrorClass::BadInput,
            SnapshotError::Config(e) => e.class(),
            SnapshotError::Topic(e) => e.class(),
            SnapshotError::Kafka { source, .. } => source.class(),
            SnapshotError::Timeout { .. } => ErrorClass::External,
            SnapshotError::Io { source, .. } => source.class(),
            SnapshotError::Parquet { .. } => ErrorClass::External,
        }
    }
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> SnapshotError {
    let what = what.into();
    move |source| SnapshotError::Kafka { what, source }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn parquet_error(path: &Path) -> impl FnOnce(String) -> SnapshotError + '_ {
    move |message| SnapshotError::Parquet {
        path: path.to_path_buf(),
        message,
    }
}

/// What a snapshot found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotCounts {
    /// Records read from the topic.
    pub records: u64,
    /// Customers with a current segment (rows written).
    pub customers: usize,
    /// Records that could not be decoded (skipped, counted).
    pub undecodable: u64,
}

/// Reads the current-membership topic to its end: the latest record per
/// customer, tombstones removing them.
pub fn read_current(
    cfg: &Config,
    timeout: Duration,
) -> Result<(BTreeMap<String, SegmentChange>, SnapshotCounts), SnapshotError> {
    let topic = &cfg.output.current_topic;
    if topic.is_empty() {
        return Err(SnapshotError::NoCurrentTopic);
    }
    // Assigned partitions: no group is joined and nothing is committed.
    let group = format!("{}-snapshot", cfg.kafka.group_id);
    let c = crate::config::reader_config(&cfg.kafka, &group, true)?;
    let consumer: BaseConsumer<QuietContext> = c
        .create_with_context(QuietContext)
        .map_err(kafka("creating the reader"))?;
    let partitions = crate::privacy::partitions_of(&consumer, topic)? as usize;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka("assigning the topic"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(kafka("assigning the topic"))?;
    let mut current = BTreeMap::new();
    let mut counts = SnapshotCounts::default();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = Instant::now() + timeout;
    while at_end.len() < partitions {
        if Instant::now() > deadline {
            return Err(SnapshotError::Timeout {
                topic: topic.clone(),
                timeout,
                done: at_end.len(),
                partitions,
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(kafka(format!("reading {topic}"))(e)),
            Some(Ok(m)) => {
                counts.records += 1;
                let Some(key) = m.key().map(|k| String::from_utf8_lossy(k).into_owned()) else {
                    counts.undecodable += 1;
                    continue;
                };
                match m.payload() {
                    None => {
                        current.remove(&key);
                    }
                    Some(v) => match decode(v, cfg.output.format) {
                        Some(c) => {
                            current.insert(key, c);
                        }
                        None => counts.undecodable += 1,
                    },
                }
            }
        }
    }
    counts.customers = current.len();
    Ok((current, counts))
}

/// A change in either output format (`None`: not one).
pub fn decode(bytes: &[u8], format: OutputFormat) -> Option<SegmentChange> {
    match format {
        OutputFormat::Protobuf => SegmentChange::decode(bytes).ok(),
        OutputFormat::Json => {
            let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
            // segstream's own JSON records, read back: a field it leaves out
            // (an empty or zero value) reads as protobuf's default, as the
            // protobuf format does.
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let f = |k: &str| v[k].as_f64().unwrap_or_default() as f32;
            let i = |k: &str| v[k].as_i64().unwrap_or_default();
            let trigger = match v["trigger"].as_str() {
                Some("EVENT") => Trigger::Event,
                Some("INACTIVITY") => Trigger::Inactivity,
                Some("MODEL_UPDATE") => Trigger::ModelUpdate,
                Some("EVICTED") => Trigger::Evicted,
                Some("ERASED") => Trigger::Erased,
                _ => Trigger::Unspecified,
            };
            let membership = match v["membership"].as_str() {
                Some("ENTERED") => Membership::Entered,
                Some("EXITED") => Membership::Exited,
                _ => Membership::Unspecified,
            };
            Some(SegmentChange {
                customer_id: s("customer_id"),
                segment: s("segment"),
                previous_segment: s("previous_segment"),
                scores: v["scores"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, x)| (k.clone(), x.as_f64().unwrap_or_default() as f32))
                            .collect()
                    })
                    .unwrap_or_default(),
                purchase_probability: f("purchase_probability"),
                churn_probability: f("churn_probability"),
                predicted_spend: f("predicted_spend"),
                model_version: s("model_version"),
                as_of_ms: i("as_of_ms"),
                decided_at_ms: i("decided_at_ms"),
                trigger: trigger as i32,
                membership: membership as i32,
                live: v["live"].as_bool().unwrap_or_default(),
                reasons: v["reasons"]
                    .as_array()
                    .map(|rs| {
                        rs.iter()
                            .map(|r| Reason {
                                feature: r["feature"].as_str().unwrap_or_default().to_string(),
                                contribution: r["contribution"].as_f64().unwrap_or_default() as f32,
                                value: r["value"].as_f64(),
                                unit: r["unit"].as_str().unwrap_or_default().to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                reasons_baseline: f("reasons_baseline"),
            })
        }
    }
}

/// Writes one JSON object per customer (the output's JSON form).
pub fn write_ndjson(
    rows: &BTreeMap<String, SegmentChange>,
    path: &Path,
) -> Result<(), SnapshotError> {
    let file = File::create(path).map_err(io(path))?;
    let mut w = BufWriter::new(file);
    for c in rows.values() {
        serde_json::to_writer(&mut w, &SegmentChangeJson::new(c))
            .map_err(std::io::Error::from)
            .map_err(io(path))?;
        w.write_all(b"\n").map_err(io(path))?;
    }
    w.flush().map_err(io(path))
}

/// Writes a Parquet file: one row per customer, one `score_<segment>`
/// column per segment seen.
pub fn write_parquet(
    rows: &BTreeMap<String, SegmentChange>,
    path: &Path,
) -> Result<(), SnapshotError> {
    let segments: std::collections::BTreeSet<&str> = rows
        .values()
        .flat_map(|c| c.scores.keys().map(String::as_str))
        .collect();
    let mut fields = vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("segment", DataType::Utf8, false),
        Field::new("purchase_probability", DataType::Float32, false),
        Field::new("churn_probability", DataType::Float32, false),
        Field::new("predicted_spend", DataType::Float32, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("as_of_ms", DataType::Int64, false),
        Field::new("decided_at_ms", DataType::Int64, false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("live", DataType::Boolean, false),
    ];
    for s in &segments {
        fields.push(Field::new(format!("score_{s}"), DataType::Float32, true));
    }
    let schema = Arc::new(Schema::new(fields));
    let v: Vec<&SegmentChange> = rows.values().collect();
    let text = |f: fn(&SegmentChange) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(v.iter().map(|c| f(c))))
    };
    let float = |f: fn(&SegmentChange) -> f32| -> ArrayRef {
        Arc::new(Float32Array::from_iter_values(v.iter().map(|c| f(c))))
    };
    let int = |f: fn(&SegmentChange) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(v.iter().map(|c| f(c))))
    };
    let mut columns: Vec<ArrayRef> = vec![
        text(|c| &c.customer_id),
        text(|c| &c.segment),
        float(|c| c.purchase_probability),
        float(|c| c.churn_probability),
        float(|c| c.predicted_spend),
        text(|c| &c.model_version),
        int(|c| c.as_of_ms),
        int(|c| c.decided_at_ms),
        Arc::new(StringArray::from_iter_values(
            v.iter().map(|c| crate::decide::trigger_name(c.trigger)),
        )),
        Arc::new(BooleanArray::from(
            v.iter().map(|c| c.live).collect::<Vec<_>>(),
        )),
    ];
    for s in &segments {
        columns.push(Arc::new(Float32Array::from(
            v.iter()
                .map(|c| c.scores.get(*s).copied())
                .collect::<Vec<_>>(),
        )));
    }
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| parquet_error(path)(e.to_string()))?;
    let file = File::create(path).map_err(io(path))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props))
        .map_err(|e| parquet_error(path)(e.to_string()))?;
    writer
        .write(&batch)
        .map_err(|e| parquet_error(path)(e.to_string()))?;
    writer
        .close()
        .map(|_| ())
        .map_err(|e| parquet_error(path)(e.to_string()))
}

/// Reads the current topic and writes `out`: Parquet for `.parquet`,
/// NDJSON for `.ndjson`, `.jsonl` or `.json`.
pub fn snapshot(
    cfg: &Config,
    out: &Path,
    timeout: Duration,
) -> Result<SnapshotCounts, SnapshotError> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !matches!(ext.as_str(), "parquet" | "ndjson" | "jsonl" | "json") {
        return Err(SnapshotError::UnknownFormat(out.to_path_buf()));
    }
    let (rows, counts) = read_current(cfg, timeout)?;
    if ext == "parquet" {
        write_parquet(&rows, out)?;
    } else {
        write_ndjson(&rows, out)?;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, seg: &str) -> SegmentChange {
        SegmentChange {
            customer_id: id.into(),
            segment: seg.into(),
            scores: [(seg.to_string(), 0.7), ("other".to_string(), 0.3)]
                .into_iter()
                .collect(),
            model_version: "m1".into(),
            trigger: Trigger::Event as i32,
            membership: Membership::Entered as i32,
            live: true,
            ..SegmentChange::default()
        }
    }

    #[test]
    fn the_json_form_decodes_back() {
        let c = change("c1", "at_risk");
        let bytes = serde_json::to_vec(&SegmentChangeJson::new(&c)).unwrap();
        assert_eq!(decode(&bytes, OutputFormat::Json), Some(c.clone()));
        assert_eq!(decode(&c.encode_to_vec(), OutputFormat::Protobuf), Some(c));
        assert_eq!(decode(b"{not json", OutputFormat::Json), None);
    }

    #[test]
    fn files_hold_one_row_per_customer() {
        let dir = tempfile::tempdir().unwrap();
        let rows: BTreeMap<String, SegmentChange> = [("a", "x"), ("b", "y")]
            .into_iter()
            .map(|(id, s)| (id.to_string(), change(id, s)))
            .collect();
        let nd = dir.path().join("s.ndjson");
        write_ndjson(&rows, &nd).unwrap();
        assert_eq!(std::fs::read_to_string(&nd).unwrap().lines().count(), 2);
        let pq = dir.path().join("s.parquet");
        write_parquet(&rows, &pq).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(&pq).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
        let schema = batches[0].schema();
        for col in [
            "customer_id",
            "segment",
            "score_x",
            "score_y",
            "score_other",
            "live",
        ] {
            assert!(schema.field_with_name(col).is_ok(), "{col}");
        }
    }
}
