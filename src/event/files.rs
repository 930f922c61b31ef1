//! Event history in files (NDJSON, Parquet, CSV) and in the input topics,
//! for the generator (writing) and the trainer and batch tools (reading).
//!
//! Every reader turns its rows into the wire struct `proto::Event` and runs
//! the one validation path of this module's parent (NDJSON goes through the
//! [`Decoder`] itself, with JSON encoding), so a history file accepts exactly
//! what the pipeline accepts. History is old by nature: readers relax the
//! time bounds and the key rule ([`history_limits`]) and keep every other
//! limit. A bad row never stops a read: it comes out as a [`Record::Bad`]
//! with its location and [`Rejection`], and is counted in [`ReadReport`].
//!
//! ## Formats
//! - **NDJSON**: one JSON event per line, exactly `schemas/event.schema.json`
//!   (what [`super::encode::to_json`] writes). Blank lines are skipped.
//! - **Parquet**: one row per event, this flat schema (nullable unless said):
//!
//!   | column | type | for |
//!   | --- | --- | --- |
//!   | `event_id` | utf8, required | all |
//!   | `customer_id` | utf8, required | all |
//!   | `event_time_ms` | int64, required | all (ms since the Unix epoch) |
//!   | `kind` | utf8, required | `browse`, `purchase` or `review` |
//!   | `action` | utf8 | browse: `view`, `cart_add`, `cart_remove`, `wishlist`, `search` |
//!   | `product_id` | utf8 | browse, review |
//!   | `category` | utf8 | browse, review |
//!   | `session_id` | utf8 | browse |
//!   | `dwell_ms` | int64 | browse |
//!   | `price_minor` | int64 | browse |
//!   | `order_id` | utf8 | purchase |
//!   | `total_minor` | int64 | purchase |
//!   | `currency` | utf8 | purchase |
//!   | `items` | utf8 | purchase: JSON array of `{product_id, category, quantity, unit_price_minor}` |
//!   | `rating` | int32 | review |
//!   | `text` | utf8 | review |
//!
//!   Line items are a JSON string rather than a nested list so the file
//!   stays readable by any Parquet tool without struct support.
//! - **CSV** (read only): one row per event, columns named by a
//!   [`CsvMapping`]; a purchase row is an order of one line.
//!
//! Progress ([`Progress`]: records and bytes) is available at any time, so
//! callers can draw a progress bar.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::encode::{encode, to_proto, WireFormat};
use super::validate::validate;
use super::{proto, Decoder, Encoding, Event, Limits, Reason, Rejection};

/// Errors that stop a read or a write (bad rows never do).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Parquet or Arrow layer failed (corrupt file, wrong schema, …).
    #[error("{path}: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The CSV header lacks a mapped column, or the mapping is invalid.
    #[error("{path}: {message}")]
    Mapping {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file's format cannot be told from its name.
    #[error("{0}: unknown file format (use .ndjson/.jsonl, .parquet or .csv, or name the format)")]
    UnknownFormat(PathBuf),
    /// Reading the input topics failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The configuration could not be turned into a consumer.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// A history file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON event per line.
    Ndjson,
    /// Parquet, the flat schema of this module.
    Parquet,
    /// CSV with a [`CsvMapping`] (read only).
    Csv,
}

impl FileFormat {
    /// The format named by a file's extension.
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "ndjson" | "jsonl" | "json" => Some(FileFormat::Ndjson),
            "parquet" | "pq" => Some(FileFormat::Parquet),
            "csv" | "tsv" | "txt" => Some(FileFormat::Csv),
            _ => None,
        }
    }

    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Ndjson => "ndjson",
            FileFormat::Parquet => "parquet",
            FileFormat::Csv => "csv",
        }
    }
}

/// The configured limits with the rules that make no sense for history
/// relaxed: any event time after 1970 and no Kafka key to match.
pub fn history_limits(limits: &Limits) -> Limits {
    Limits {
        max_past_ms: i64::MAX / 4,
        max_future_ms: i64::MAX / 4,
        require_key_match: false,
        ..limits.clone()
    }
}

/// How far a read has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Rows or records read (good and bad).
    pub records: u64,
    /// Bytes read so far (for Parquet: compressed bytes of the row groups
    /// read so far; for topics: value bytes).
    pub bytes: u64,
    /// Total bytes when known (file size; for topics, unknown).
    pub total_bytes: Option<u64>,
    /// Rows refused so far.
    pub rejected: u64,
}

/// A refused row: where it was and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    /// `file:line` (NDJSON, CSV), `file:row` (Parquet) or `topic[partition]@offset`.
    pub location: String,
    /// Why.
    pub rejection: Rejection,
}

/// One row of a history source.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A valid event.
    Event(Event),
    /// A refused row.
    Bad(BadRow),
}

/// What a whole read produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReadReport {
    /// Valid events.
    pub events: u64,
    /// Refused rows by reason code.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Final progress.
    pub progress: Progress,
}

impl ReadReport {
    fn count(&mut self, r: &Record) {
        match r {
            Record::Event(_) => self.events += 1,
            Record::Bad(b) => {
                *self
                    .rejected
                    .entry(b.rejection.reason.as_str())
                    .or_default() += 1
            }
        }
    }

    /// Refused rows in all.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// A streaming reader of one history file: an iterator of [`Record`]s
/// (an `Err` only for I/O or corruption that stops the read).
pub struct EventReader {
    source: Source,
    progress: Progress,
    report: ReadReport,
}

enum Source {
    Ndjson(NdjsonSource),
    Parquet(ParquetSource),
    Csv(Box<CsvSource>),
}

impl EventReader {
    /// Opens `path` in `format` (or the format its extension names).
    /// `mapping` is needed for CSV only (the default mapping otherwise).
    pub fn open(
        path: &Path,
        format: Option<FileFormat>,
        limits: &Limits,
        mapping: Option<&CsvMapping>,
    ) -> Result<Self, FileError> {
        let format = format
            .or_else(|| FileFormat::from_path(path))
            .ok_or_else(|| FileError::UnknownFormat(path.to_path_buf()))?;
        let file = File::open(path).map_err(io(path))?;
        let total = file.metadata().map(|m| m.len()).ok();
        let limits = history_limits(limits);
        let source = match format {
            FileFormat::Ndjson => Source::Ndjson(NdjsonSource::new(path, file, limits)),
            FileFormat::Parquet => Source::Parquet(ParquetSource::new(path, file, limits)?),
            FileFormat::Csv => {
                let default = CsvMapping::default();
                Source::Csv(Box::new(CsvSource::new(
                    path,
                    file,
                    limits,
                    mapping.unwrap_or(&default),
                )?))
            }
        };
        Ok(EventReader {
            source,
            progress: Progress {
                total_bytes: total,
                ..Progress::default()
            },
            report: ReadReport::default(),
        })
    }

    /// How far the read has come.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Counts so far (complete once the iterator has ended).
    pub fn report(&self) -> ReadReport {
        ReadReport {
            progress: self.progress,
            ..self.report.clone()
        }
    }

    /// Reads everything, handing each record to `on_record` and the
    /// progress to `on_progress` every `every` records and at the end.
    pub fn for_each(
        mut self,
        every: u64,
        mut on_record: impl FnMut(Record),
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<ReadReport, FileError> {
        let every = every.max(1);
        while let Some(r) = self.next() {
            on_record(r?);
            if self.progress.records % every == 0 {
                on_progress(&self.progress);
            }
        }
        on_progress(&self.progress);
        Ok(self.report())
    }
}

impl Iterator for EventReader {
    type Item = Result<Record, FileError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = match &mut self.source {
            Source::Ndjson(s) => s.next(&mut self.progress.bytes),
            Source::Parquet(s) => s.next(&mut self.progress.bytes),
            Source::Csv(s) => s.next(&mut self.progress.bytes),
        };
        if let Some(Ok(r)) = &item {
            self.progress.records += 1;
            if matches!(r, Record::Bad(_)) {
                self.progress.rejected += 1;
            }
            self.report.count(r);
        }
        item
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn finish(raw: proto::Event, limits: &Limits, location: impl FnOnce() -> String) -> Record {
    match validate(raw, None, 0, limits) {
        Ok(e) => Record::Event(e),
        Err(rejection) => Record::Bad(BadRow {
            location: location(),
            rejection,
        }),
    }
}

// ---------------------------------------------------------------------------
// NDJSON

struct NdjsonSource {
    path: PathBuf,
    reader: BufReader<File>,
    decoder: Decoder,
    line: u64,
    buf: Vec<u8>,
}

impl NdjsonSource {
    fn new(path: &Path, file: File, limits: Limits) -> Self {
        NdjsonSource {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            decoder: Decoder::new(Encoding::Json, limits),
            line: 0,
            buf: Vec::new(),
        }
    }

    fn next(&mut self, bytes: &mut u64) -> Option<Result<Record, FileError>> {
        loop {
            self.buf.clear();
            let n = match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) => return Some(Err(io(&self.path)(e))),
            };
            *bytes += n as u64;
            self.line += 1;
            let text = self.buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            return Some(Ok(match self.decoder.decode(None, Some(text), 0) {
                Ok((e, _)) => Record::Event(e),
                Err(rejection) => Record::Bad(BadRow {
                    location: format!("{}:{}", self.path.display(), self.line),
                    rejection,
                }),
            }));
        }
    }
}

// ---------------------------------------------------------------------------
// Parquet

/// The Arrow schema of event Parquet files (see the module docs).
pub fn parquet_schema() -> SchemaRef {
    let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let i = |name: &str| Field::new(name, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        s("event_id", false),
        s("customer_id", false),
        Field::new("event_time_ms", DataType::Int64, false),
        s("kind", false),
        s("action", true),
        s("product_id", true),
        s("category", true),
        s("session_id", true),
        i("dwell_ms"),
        i("price_minor"),
        s("order_id", true),
        i("total_minor"),
        s("currency", true),
        s("items", true),
        Field::new("rating", DataType::Int32, true),
        s("text", true),
    ]))
}

struct ParquetSource {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    /// Compressed bytes per row group, consumed as rows are read.
    group_bytes: Vec<(u64, u64)>,
    batch: Option<RecordBatch>,
    row_in_batch: usize,
    row: u64,
    limits: Limits,
}

impl ParquetSource {
    fn new(path: &Path, file: File, limits: Limits) -> Result<Self, FileError> {
        let err = |e: parquet::errors::ParquetError| FileError::Parquet {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(err)?;
        let group_bytes = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| {
                (
                    g.num_rows().max(0) as u64,
                    g.compressed_size().max(0) as u64,
                )
            })
            .collect();
        let reader = builder.with_batch_size(8192).build().map_err(err)?;
        Ok(ParquetSource {
            path: path.to_path_buf(),
            reader,
            group_bytes,
            batch: None,
            row_in_batch: 0,
            row: 0,
            limits,
        })
    }

    fn next(&mut self, bytes: &mut u64) -> Option<Result<Record, FileError>> {
        loop {
            if let Some(b) = &self.batch {
                if self.row_in_batch < b.num_rows() {
                    let i = self.row_in_batch;
                    self.row_in_batch += 1;
                    self.row += 1;
                    *bytes = self.bytes_read();
                    let row = self.row;
                    let path = &self.path;
                    let record = match parquet_row(b, i) {
                        Ok(raw) => finish(raw, &self.limits, || {
                            format!("{}:row {row}", path.display())
                        }),
                        Err(rejection) => Record::Bad(BadRow {
                            location: format!("{}:row {row}", path.display()),
                            rejection,
                        }),
                    };
                    return Some(Ok(record));
                }
            }
            match self.reader.next()? {
                Ok(b) => {
                    self.batch = Some(b);
                    self.row_in_batch = 0;
                }
                Err(e) => {
                    return Some(Err(FileError::Parquet {
                        path: self.path.clone(),
                        message: e.to_string(),
                    }))
                }
            }
        }
    }

    /// Compressed bytes of the row groups started so far.
    fn bytes_read(&self) -> u64 {
        let mut rows = 0;
        let mut bytes = 0;
        for (n, b) in &self.group_bytes {
            if rows >= self.row {
                break;
            }
            rows += n;
            bytes += b;
        }
        bytes
    }
}

/// A column as strings, or `None` when absent or of another type.
fn str_col<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a arrow_array::StringArray> {
    b.column_by_name(name)?.as_string_opt::<i32>()
}

fn int_col<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a Int64Array> {
    b.column_by_name(name)?.as_primitive_opt::<Int64Type>()
}

fn parquet_row(b: &RecordBatch, i: usize) -> Result<proto::Event, Rejection> {
    let s = |name: &str| -> String {
        str_col(b, name)
            .filter(|c| c.is_valid(i))
            .map(|c| c.value(i).to_string())
            .unwrap_or_default()
    };
    let n = |name: &str| -> i64 {
        int_col(b, name)
            .filter(|c| c.is_valid(i))
            .map(|c| c.value(i))
            .unwrap_or_default()
    };
    let kind = s("kind");
    let payload = match kind.as_str() {
        "browse" => Some(proto::event::Payload::Browse(proto::Browse {
            product_id: s("product_id"),
            category: s("category"),
            session_id: s("session_id"),
            action: action_code(&s("action")),
            dwell_ms: n("dwell_ms"),
            price_minor: n("price_minor"),
        })),
        "purchase" => {
            let items_json = s("items");
            let items: Vec<JsonItem> = if items_json.is_empty() {
                Vec::new()
            } else {
                serde_json::from_str(&items_json).map_err(|e| {
                    Rejection::new(
                        Reason::InvalidField,
                        format!("items is not a JSON array of line items: {e}"),
                    )
                })?
            };
            Some(proto::event::Payload::Purchase(proto::Purchase {
                order_id: s("order_id"),
                items: items.into_iter().map(JsonItem::into_proto).collect(),
                total_minor: n("total_minor"),
                currency: s("currency"),
            }))
        }
        "review" => Some(proto::event::Payload::Review(proto::Review {
            product_id: s("product_id"),
            category: s("category"),
            rating: b
                .column_by_name("rating")
                .and_then(|c| c.as_primitive_opt::<Int32Type>())
                .filter(|c| c.is_valid(i))
                .map(|c| c.value(i))
                .unwrap_or_default(),
            text: s("text"),
        })),
        _ => None,
    };
    Ok(proto::Event {
        event_id: s("event_id"),
        customer_id: s("customer_id"),
        event_time_ms: n("event_time_ms"),
        payload,
    })
}

fn action_code(name: &str) -> i32 {
    let a = match name.trim().to_ascii_lowercase().as_str() {
        "view" => proto::BrowseAction::View,
        "cart_add" | "add_to_cart" => proto::BrowseAction::CartAdd,
        "cart_remove" | "remove_from_cart" => proto::BrowseAction::CartRemove,
        "wishlist" => proto::BrowseAction::Wishlist,
        "search" => proto::BrowseAction::Search,
        _ => proto::BrowseAction::Unspecified,
    };
    a as i32
}

#[derive(Serialize, Deserialize)]
struct JsonItem {
    product_id: String,
    category: String,
    quantity: i64,
    unit_price_minor: i64,
}

impl JsonItem {
    fn into_proto(self) -> proto::LineItem {
        proto::LineItem {
            product_id: self.product_id,
            category: self.category,
            quantity: self.quantity,
            unit_price_minor: self.unit_price_minor,
        }
    }
}

/// Column buffers of the Parquet writer.
#[derive(Default)]
struct Columns {
    event_id: Vec<String>,
    customer_id: Vec<String>,
    event_time_ms: Vec<i64>,
    kind: Vec<&'static str>,
    action: Vec<Option<&'static str>>,
    product_id: Vec<Option<String>>,
    category: Vec<Option<String>>,
    session_id: Vec<Option<String>>,
    dwell_ms: Vec<Option<i64>>,
    price_minor: Vec<Option<i64>>,
    order_id: Vec<Option<String>>,
    total_minor: Vec<Option<i64>>,
    currency: Vec<Option<String>>,
    items: Vec<Option<String>>,
    rating: Vec<Option<i32>>,
    text: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, e: &Event) {
        use super::Payload;
        self.event_id.push(e.event_id.clone());
        self.customer_id.push(e.customer_id.clone());
        self.event_time_ms.push(e.event_time_ms);
        self.kind.push(e.kind().as_str());
        let (mut action, mut product, mut category, mut session) = (None, None, None, None);
        let (mut dwell, mut price, mut order, mut total) = (None, None, None, None);
        let (mut currency, mut items, mut rating, mut text) = (None, None, None, None);
        match &e.payload {
            Payload::Browse(b) => {
                action = Some(b.action.as_str());
                product = Some(b.product_id.clone());
                category = Some(b.category.clone());
                session = Some(b.session_id.clone());
                dwell = Some(b.dwell_ms);
                price = Some(b.price_minor);
            }
            Payload::Purchase(p) => {
                order = Some(p.order_id.clone());
                total = Some(p.total_minor);
                currency = Some(p.currency.clone());
                let list: Vec<JsonItem> = p
                    .items
                    .iter()
                    .map(|i| JsonItem {
                        product_id: i.product_id.clone(),
                        category: i.category.clone(),
                        quantity: i.quantity,
                        unit_price_minor: i.unit_price_minor,
                    })
                    .collect();
                items = serde_json::to_string(&list).ok();
            }
            Payload::Review(r) => {
                product = Some(r.product_id.clone());
                category = Some(r.category.clone());
                rating = Some(i32::from(r.rating));
                text = Some(r.text.clone());
            }
        }
        self.action.push(action);
        self.product_id.push(product);
        self.category.push(category);
        self.session_id.push(session);
        self.dwell_ms.push(dwell);
        self.price_minor.push(price);
        self.order_id.push(order);
        self.total_minor.push(total);
        self.currency.push(currency);
        self.items.push(items);
        self.rating.push(rating);
        self.text.push(text);
    }

    fn len(&self) -> usize {
        self.event_id.len()
    }

    fn take_batch(&mut self, schema: &SchemaRef) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let c = std::mem::take(self);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(c.event_id)),
            Arc::new(StringArray::from(c.customer_id)),
            Arc::new(Int64Array::from(c.event_time_ms)),
            Arc::new(StringArray::from(c.kind)),
            Arc::new(StringArray::from(c.action)),
            Arc::new(StringArray::from(c.product_id)),
            Arc::new(StringArray::from(c.category)),
            Arc::new(StringArray::from(c.session_id)),
            Arc::new(Int64Array::from(c.dwell_ms)),
            Arc::new(Int64Array::from(c.price_minor)),
            Arc::new(StringArray::from(c.order_id)),
            Arc::new(Int64Array::from(c.total_minor)),
            Arc::new(StringArray::from(c.currency)),
            Arc::new(StringArray::from(c.items)),
            Arc::new(Int32Array::from(c.rating)),
            Arc::new(StringArray::from(c.text)),
        ];
        RecordBatch::try_new(schema.clone(), columns)
    }
}

// ---------------------------------------------------------------------------
// Writers

/// What a writer wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WriteReport {
    /// Events written.
    pub events: u64,
    /// Size of the finished file in bytes.
    pub bytes: u64,
}

/// Writes events to an NDJSON or Parquet file (see the module docs).
pub struct EventWriter {
    path: PathBuf,
    sink: Sink,
    events: u64,
}

enum Sink {
    Ndjson(BufWriter<File>),
    Parquet {
        writer: Box<ArrowWriter<File>>,
        columns: Box<Columns>,
        schema: SchemaRef,
    },
}

/// Rows per Parquet batch handed to the writer.
const PARQUET_BATCH: usize = 65_536;

impl EventWriter {
    /// Creates (truncates) `path`. CSV is a read-only format.
    pub fn create(path: &Path, format: FileFormat) -> Result<Self, FileError> {
        let file = File::create(path).map_err(io(path))?;
        let sink = match format {
            FileFormat::Ndjson => Sink::Ndjson(BufWriter::with_capacity(1 << 20, file)),
            FileFormat::Parquet => {
                let schema = parquet_schema();
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .set_max_row_group_row_count(Some(256 * 1024))
                    .build();
                let writer =
                    ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| {
                        FileError::Parquet {
                            path: path.to_path_buf(),
                            message: e.to_string(),
                        }
                    })?;
                Sink::Parquet {
                    writer: Box::new(writer),
                    columns: Box::default(),
                    schema,
                }
            }
            FileFormat::Csv => {
                return Err(FileError::Mapping {
                    path: path.to_path_buf(),
                    message: "CSV is read-only; write ndjson or parquet".into(),
                })
            }
        };
        Ok(EventWriter {
            path: path.to_path_buf(),
            sink,
            events: 0,
        })
    }

    /// Appends one event.
    pub fn write(&mut self, event: &Event) -> Result<(), FileError> {
        self.events += 1;
        match &mut self.sink {
            Sink::Ndjson(w) => {
                let mut line = encode(&to_proto(event), WireFormat::Json);
                line.push(b'\n');
                w.write_all(&line).map_err(io(&self.path))
            }
            Sink::Parquet {
                writer,
                columns,
                schema,
            } => {
                columns.push(event);
                if columns.len() >= PARQUET_BATCH {
                    flush_parquet(&self.path, writer, columns, schema)?;
                }
                Ok(())
            }
        }
    }

    /// Flushes and closes the file.
    pub fn finish(self) -> Result<WriteReport, FileError> {
        let path = self.path;
        match self.sink {
            Sink::Ndjson(mut w) => w.flush().map_err(io(&path))?,
            Sink::Parquet {
                mut writer,
                mut columns,
                schema,
            } => {
                if columns.len() > 0 {
                    flush_parquet(&path, &mut writer, &mut columns, &schema)?;
                }
                writer.close().map_err(|e| FileError::Parquet {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            }
        }
        let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
        Ok(WriteReport {
            events: self.events,
            bytes,
        })
    }
}

fn flush_parquet(
    path: &Path,
    writer: &mut ArrowWriter<File>,
    columns: &mut Columns,
    schema: &SchemaRef,
) -> Result<(), FileError> {
    let err = |message: String| FileError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let batch = columns.take_batch(schema).map_err(|e| err(e.to_string()))?;
    writer.write(&batch).map_err(|e| err(e.to_string()))
}

// ---------------------------------------------------------------------------
// CSV

/// How CSV columns map onto events. Column names are matched against the
/// header row, case-insensitively. Each row is one event; its kind comes
/// from the `kind` column, whose value is `browse`, `purchase` (or
/// `order`), `review`, or a browse action name (`view`, `cart_add`,
/// `cart_remove`, `wishlist`, `search`), which implies `browse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsvMapping {
    /// Field separator: one ASCII character (`","`, `";"`, `"|"`), `"tab"`,
    /// or `"whitespace"` (any run of spaces and tabs, as in fixed-width or
    /// space-separated text files; no quoting).
    pub delimiter: String,
    /// Whether the first line names the columns. Without a header, columns
    /// are named by their position: `"1"`, `"2"`, ...
    pub header: bool,
    /// Column of the customer id (required).
    pub customer: String,
    /// Column of the event time (required).
    pub time: String,
    /// How the time column is written: `epoch_ms`, `epoch_s`, `rfc3339`, or
    /// a strftime pattern such as `"%Y%m%d"` or `"%d/%m/%Y %H:%M"` (UTC
    /// unless the pattern has `%z`; a date alone is midnight UTC).
    pub time_format: TimeFormat,
    /// Column of the event kind (required unless `default_kind` is set).
    pub kind: String,
    /// The kind of every row whose kind column is absent or empty, e.g.
    /// `"purchase"` for an orders table.
    pub default_kind: Option<String>,
    /// The product id of rows without one (absent product column or empty
    /// cell), e.g. `"unknown"`.
    pub default_product: Option<String>,
    /// Column of the browse action, when actions are not in `kind` (absent: `view`).
    pub action: Option<String>,
    /// Column of the event id (absent: `<file name>:<line>`).
    pub event_id: Option<String>,
    /// Column of the amount: order total for purchases, displayed price for browsing.
    pub amount: Option<String>,
    /// How amounts are written.
    pub amount_format: AmountFormat,
    /// Column of the currency (absent: `default_currency`).
    pub currency: Option<String>,
    /// Currency when there is no currency column.
    pub default_currency: String,
    /// Column of the product id.
    pub product: Option<String>,
    /// Column of the category.
    pub category: Option<String>,
    /// Column of the quantity of a purchase (absent: 1); the unit price is amount / quantity.
    pub quantity: Option<String>,
    /// Column of the order id (absent: the event id).
    pub order_id: Option<String>,
    /// Column of the browsing session id.
    pub session: Option<String>,
    /// Column of the time on page in milliseconds.
    pub dwell_ms: Option<String>,
    /// Column of the review rating (1–5).
    pub rating: Option<String>,
    /// Column of the review text.
    pub text: Option<String>,
}

/// How a CSV time column is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TimeFormat {
    /// Milliseconds since the Unix epoch (`epoch_ms`).
    EpochMs,
    /// Seconds since the Unix epoch, fractions allowed (`epoch_s`).
    EpochS,
    /// RFC 3339, e.g. `2025-03-01T12:00:00Z` or `2025-03-01T13:00:00+01:00`.
    Rfc3339,
    /// A strftime pattern (chrono's), e.g. `%Y%m%d` or `%d/%m/%Y %H:%M`.
    Strftime(String),
}

impl TryFrom<String> for TimeFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "epoch_ms" => Ok(TimeFormat::EpochMs),
            "epoch_s" => Ok(TimeFormat::EpochS),
            "rfc3339" => Ok(TimeFormat::Rfc3339),
            p if p.contains('%') => Ok(TimeFormat::Strftime(s)),
            other => Err(format!(
                "time_format {other:?}: use epoch_ms, epoch_s, rfc3339 or a strftime pattern such as \"%Y%m%d\""
            )),
        }
    }
}

impl From<TimeFormat> for String {
    fn from(f: TimeFormat) -> String {
        match f {
            TimeFormat::EpochMs => "epoch_ms".into(),
            TimeFormat::EpochS => "epoch_s".into(),
            TimeFormat::Rfc3339 => "rfc3339".into(),
            TimeFormat::Strftime(p) => p,
        }
    }
}

/// How CSV amounts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmountFormat {
    /// Integer minor units (cents): `1999`.
    Minor,
    /// Decimal major units: `19.99`.
    Major,
}

impl Default for CsvMapping {
    fn default() -> Self {
        CsvMapping {
            delimiter: ",".into(),
            header: true,
            customer: "customer_id".into(),
            time: "event_time".into(),
            time_format: TimeFormat::Rfc3339,
            kind: "kind".into(),
            default_kind: None,
            default_product: None,
            action: Some("action".into()),
            event_id: Some("event_id".into()),
            amount: Some("amount".into()),
            amount_format: AmountFormat::Major,
            currency: Some("currency".into()),
            default_currency: "EUR".into(),
            product: Some("product_id".into()),
            category: Some("category".into()),
            quantity: Some("quantity".into()),
            order_id: None,
            session: Some("session_id".into()),
            dwell_ms: None,
            rating: Some("rating".into()),
            text: Some("text".into()),
        }
    }
}

/// Column indexes resolved against the header. Optional columns that the
/// header lacks are simply absent (the default mapping names many).
struct CsvColumns {
    customer: usize,
    time: usize,
    kind: Option<usize>,
    action: Option<usize>,
    event_id: Option<usize>,
    amount: Option<usize>,
    currency: Option<usize>,
    product: Option<usize>,
    category: Option<usize>,
    quantity: Option<usize>,
    order_id: Option<usize>,
    session: Option<usize>,
    dwell_ms: Option<usize>,
    rating: Option<usize>,
    text: Option<usize>,
}

struct CsvSource {
    path: PathBuf,
    name: String,
    reader: csv::Reader<Box<dyn Read + Send>>,
    /// Bytes read from the file so far.
    bytes: Arc<std::sync::atomic::AtomicU64>,
    columns: CsvColumns,
    mapping: CsvMapping,
    limits: Limits,
    record: csv::StringRecord,
    /// The first row of a file without a header (read to count columns).
    pending: Option<csv::StringRecord>,
}

/// Turns whitespace-separated text into tab-separated lines: each line is
/// trimmed and every run of spaces and tabs becomes one tab.
struct WhitespaceColumns<R> {
    inner: BufReader<R>,
    line: String,
    out: Vec<u8>,
    at: usize,
}

impl<R: Read> WhitespaceColumns<R> {
    fn new(inner: R) -> Self {
        WhitespaceColumns {
            inner: BufReader::new(inner),
            line: String::new(),
            out: Vec::new(),
            at: 0,
        }
    }
}

impl<R: Read> Read for WhitespaceColumns<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead as _;
        while self.at == self.out.len() {
            self.line.clear();
            if self.inner.read_line(&mut self.line)? == 0 {
                return Ok(0);
            }
            self.out.clear();
            self.at = 0;
            let mut first = true;
            for field in self.line.split_whitespace() {
                if !first {
                    self.out.push(b'\t');
                }
                first = false;
                self.out.extend_from_slice(field.as_bytes());
            }
            self.out.push(b'\n');
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Counts bytes as the CSV parser pulls them.
struct CountingReader {
    inner: BufReader<File>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

impl CsvSource {
    fn new(
        path: &Path,
        file: File,
        limits: Limits,
        mapping: &CsvMapping,
    ) -> Result<Self, FileError> {
        let bad = |message: String| FileError::Mapping {
            path: path.to_path_buf(),
            message,
        };
        let (delimiter, whitespace) = match mapping.delimiter.as_str() {
            "whitespace" | "space" => (b'\t', true),
            "tab" | "\t" => (b'\t', false),
            d if d.len() == 1 && d.is_ascii() => (d.as_bytes()[0], false),
            d => {
                return Err(bad(format!(
                    "delimiter {d:?}: use one ASCII character, \"tab\" or \"whitespace\""
                )))
            }
        };
        let bytes: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let counting = CountingReader {
            inner: BufReader::with_capacity(1 << 20, file),
            bytes: bytes.clone(),
        };
        let input: Box<dyn Read + Send> = if whitespace {
            Box::new(WhitespaceColumns::new(counting))
        } else {
            Box::new(counting)
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .quoting(!whitespace)
            .has_headers(mapping.header)
            .flexible(true)
            .from_reader(input);
        let mut pending = None;
        let header = if mapping.header {
            reader.headers().map_err(|e| bad(e.to_string()))?.clone()
        } else {
            // Columns named by position; the first record tells how many
            // and is processed first.
            let mut first = csv::StringRecord::new();
            let width = if reader
                .read_record(&mut first)
                .map_err(|e| bad(e.to_string()))?
            {
                first.len()
            } else {
                0
            };
            pending = Some(first).filter(|_| width > 0);
            csv::StringRecord::from((1..=width).map(|i| i.to_string()).collect::<Vec<_>>())
        };
        let find = |name: &str| {
            header
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name.trim()))
        };
        let mut missing = Vec::new();
        let mut required = |name: &str| {
            find(name).unwrap_or_else(|| {
                missing.push(name.to_string());
                0
            })
        };
        let customer = required(&mapping.customer);
        let time = required(&mapping.time);
        let kind = if mapping.default_kind.is_some() {
            find(&mapping.kind)
        } else {
            Some(required(&mapping.kind))
        };
        if !missing.is_empty() {
            return Err(bad(format!(
                "the header lacks the mapped column(s) {missing:?}; it has {:?}",
                header.iter().collect::<Vec<_>>()
            )));
        }
        let opt = |name: &Option<String>| name.as_deref().and_then(find);
        let columns = CsvColumns {
            customer,
            time,
            kind,
            action: opt(&mapping.action),
            event_id: opt(&mapping.event_id),
            amount: opt(&mapping.amount),
            currency: opt(&mapping.currency),
            product: opt(&mapping.product),
            category: opt(&mapping.category),
            quantity: opt(&mapping.quantity),
            order_id: opt(&mapping.order_id),
            session: opt(&mapping.session),
            dwell_ms: opt(&mapping.dwell_ms),
            rating: opt(&mapping.rating),
            text: opt(&mapping.text),
        };
        Ok(CsvSource {
            path: path.to_path_buf(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            reader,
            bytes,
            columns,
            mapping: mapping.clone(),
            limits,
            record: csv::StringRecord::new(),
            pending,
        })
    }

    fn next(&mut self, bytes: &mut u64) -> Option<Result<Record, FileError>> {
        let result = match self.pending.take() {
            Some(first) => {
                self.record = first;
                Ok(true)
            }
            None => self.reader.read_record(&mut self.record),
        };
        *bytes = self
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(self.reader.position().byte());
        let line = self
            .record
            .position()
            .map_or_else(|| self.reader.position().line(), |p| p.line());
        let location = || format!("{}:{line}", self.path.display());
        match result {
            Ok(false) => None,
            Ok(true) => Some(Ok(match self.row(line) {
                Ok(raw) => finish(raw, &self.limits, location),
                Err(rejection) => Record::Bad(BadRow {
                    location: location(),
                    rejection,
                }),
            })),
            Err(e) => match e.kind() {
                csv::ErrorKind::Io(_) => Some(Err(FileError::Mapping {
                    path: self.path.clone(),
                    message: e.to_string(),
                })),
                _ => Some(Ok(Record::Bad(BadRow {
                    location: location(),
                    rejection: Rejection::new(Reason::InvalidField, format!("bad CSV row: {e}")),
                }))),
            },
        }
    }

    fn row(&self, line: u64) -> Result<proto::Event, Rejection> {
        let r = &self.record;
        let get = |i: Option<usize>| i.and_then(|i| r.get(i)).map(str::trim).unwrap_or("");
        let c = &self.columns;
        let m = &self.mapping;
        let invalid = |what: &str, v: &str| {
            Rejection::new(Reason::InvalidField, format!("{what} {v:?} is not valid"))
        };
        let customer_id = get(Some(c.customer)).to_string();
        let time_text = get(Some(c.time));
        let event_time_ms = parse_time(time_text, &m.time_format).ok_or_else(|| {
            invalid(
                &format!("time ({})", String::from(m.time_format.clone())),
                time_text,
            )
        })?;
        let event_id = match get(c.event_id) {
            "" => format!("{}:{line}", self.name),
            id => id.to_string(),
        };
        let amount_text = get(c.amount);
        let amount = if amount_text.is_empty() {
            0
        } else {
            parse_amount(amount_text, m.amount_format)
                .ok_or_else(|| invalid("amount", amount_text))?
        };
        let kind = match (get(c.kind), &m.default_kind) {
            ("", Some(k)) => k.to_ascii_lowercase(),
            (k, _) => k.to_ascii_lowercase(),
        };
        let product_id = match (get(c.product), &m.default_product) {
            ("", Some(p)) => p.clone(),
            (p, _) => p.to_string(),
        };
        let category = get(c.category).to_string();
        let payload = match kind.as_str() {
            "purchase" | "order" => {
                let q_text = get(c.quantity);
                let quantity = if q_text.is_empty() {
                    1
                } else {
                    q_text
                        .parse::<i64>()
                        .map_err(|_| invalid("quantity", q_text))?
                };
                let currency = match get(c.currency) {
                    "" => m.default_currency.clone(),
                    cur => cur.to_ascii_uppercase(),
                };
                let order_id = match get(c.order_id) {
                    "" => event_id.clone(),
                    o => o.to_string(),
                };
                proto::event::Payload::Purchase(proto::Purchase {
                    order_id,
                    items: vec![proto::LineItem {
                        product_id,
                        category,
                        quantity,
                        unit_price_minor: if quantity > 0 {
                            amount / quantity
                        } else {
                            amount
                        },
                    }],
                    total_minor: amount,
                    currency,
                })
            }
            "review" => {
                let rating_text = get(c.rating);
                let rating = rating_text
                    .parse::<f64>()
                    .map(|x| x.round() as i32)
                    .map_err(|_| invalid("rating", rating_text))?;
                proto::event::Payload::Review(proto::Review {
                    product_id,
                    category,
                    rating,
                    text: get(c.text).to_string(),
                })
            }
            other => {
                let action_name = if other == "browse" {
                    match get(c.action) {
                        "" => "view",
                        a => a,
                    }
                } else {
                    other
                };
                let action = action_code(action_name);
                if action == proto::BrowseAction::Unspecified as i32 {
                    return Err(invalid("kind/action", other));
                }
                let dwell_text = get(c.dwell_ms);
                let dwell_ms = if dwell_text.is_empty() {
                    0
                } else {
                    dwell_text
                        .parse::<i64>()
                        .map_err(|_| invalid("dwell_ms", dwell_text))?
                };
                proto::event::Payload::Browse(proto::Browse {
                    product_id,
                    category,
                    session_id: get(c.session).to_string(),
                    action,
                    dwell_ms,
                    price_minor: amount,
                })
            }
        };
        Ok(proto::Event {
            event_id,
            customer_id,
            event_time_ms,
            payload: Some(payload),
        })
    }
}

/// Parses an event time; `None` when it is not in `format`.
pub fn parse_time(text: &str, format: &TimeFormat) -> Option<i64> {
    match format {
        TimeFormat::EpochMs => text.parse::<i64>().ok(),
        TimeFormat::EpochS => {
            let s = text.parse::<f64>().ok()?;
            s.is_finite().then(|| (s * 1000.0).round() as i64)
        }
        TimeFormat::Rfc3339 => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis()),
        TimeFormat::Strftime(pattern) => chrono::DateTime::parse_from_str(text, pattern)
            .map(|t| t.timestamp_millis())
            .or_else(|_| {
                chrono::NaiveDateTime::parse_from_str(text, pattern)
                    .map(|t| t.and_utc().timestamp_millis())
            })
            .or_else(|_| {
                chrono::NaiveDate::parse_from_str(text, pattern).map(|d| {
                    d.and_hms_opt(0, 0, 0)
                        .map_or(0, |t| t.and_utc().timestamp_millis())
                })
            })
            .ok(),
    }
}

/// Parses an amount into minor units; `None` when malformed.
pub fn parse_amount(text: &str, format: AmountFormat) -> Option<i64> {
    match format {
        AmountFormat::Minor => text.parse::<i64>().ok(),
        AmountFormat::Major => {
            let x = text.parse::<f64>().ok()?;
            x.is_finite().then(|| (x * 100.0).round() as i64)
        }
    }
}

// ---------------------------------------------------------------------------
// Input topics

/// Reads the configured input topics from their beginning up to the end
/// offsets they have when the read starts (`read_committed`), routing each
/// record exactly as the pipeline does ([`crate::ingest::route`], with the
/// configured decoder and limits). Blocking: call it from a blocking task.
/// It joins no consumer group and commits nothing. `on_progress` is called
/// every `every` records and at the end.
pub fn read_topics(
    config: &crate::config::Config,
    every: u64,
    mut on_record: impl FnMut(Record),
    mut on_progress: impl FnMut(&Progress),
) -> Result<ReadReport, FileError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    use std::time::{Duration, Instant};

    use crate::ingest::{intern, now_ms, route, source_record, Routed};

    let kafka = |what: &str| {
        let what = what.to_string();
        move |source| FileError::Kafka { what, source }
    };
    let mut client = config.kafka.consumer_config()?;
    client
        .set(
            "group.id",
            format!("{}-history-{}", config.kafka.group_id, std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = client.create().map_err(kafka("creating the consumer"))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(kafka("fetching metadata"))?;
    let mut tpl = TopicPartitionList::new();
    // (topic, partition) → end offset still to reach.
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for topic in &config.input.topics {
        let Some(m) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(FileError::Kafka {
                what: format!("input topic {topic} does not exist"),
                source: rdkafka::error::KafkaError::MetadataFetch(
                    rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
                ),
            });
        };
        for p in m.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .map_err(kafka("fetching end offsets"))?;
            if high > low {
                ends.insert((topic.clone(), p.id()), high);
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .map_err(kafka("assigning partitions"))?;
            }
        }
    }
    let mut report = ReadReport::default();
    let mut progress = Progress::default();
    if ends.is_empty() {
        on_progress(&progress);
        report.progress = progress;
        return Ok(report);
    }
    consumer
        .assign(&tpl)
        .map_err(kafka("assigning partitions"))?;
    let decoder = config.decoders();
    let max_dlq = config.dead_letter.max_value_bytes;
    let mut names = BTreeMap::new();
    let mut last_data = Instant::now();
    let every = every.max(1);
    while !ends.is_empty() {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            // Transaction markers occupy the last offsets of a partition
            // without being delivered; position tells when they are passed.
            if let Ok(pos) = consumer.position() {
                for e in pos.elements() {
                    if let Some(o) = e.offset().to_raw() {
                        let key = (e.topic().to_string(), e.partition());
                        if ends.get(&key).is_some_and(|end| o >= *end) {
                            ends.remove(&key);
                        }
                    }
                }
            }
            if last_data.elapsed() > Duration::from_secs(10) {
                tracing::warn!(
                    partitions = ends.len(),
                    "Stopped reading the input topics: no record for 10 s before their end offsets (an open transaction?)."
                );
                break;
            }
            continue;
        };
        let msg = msg.map_err(kafka("reading the input topics"))?;
        last_data = Instant::now();
        let topic = intern(&mut names, msg.topic());
        let record = source_record(&msg);
        let key = (msg.topic().to_string(), msg.partition());
        let Some(end) = ends.get(&key).copied() else {
            continue;
        };
        if record.offset >= end {
            ends.remove(&key);
            continue;
        }
        if record.offset + 1 >= end {
            ends.remove(&key);
        }
        progress.records += 1;
        progress.bytes += record.value.map_or(0, |v| v.len() as u64);
        let r = match route(&decoder, &record, &topic, now_ms(), max_dlq) {
            Routed::Event(e) => Record::Event(e.event),
            Routed::DeadLetter(d) => {
                progress.rejected += 1;
                Record::Bad(BadRow {
                    location: format!("{}[{}]@{}", record.topic, record.partition, record.offset),
                    rejection: Rejection::new(d.reason, d.message),
                })
            }
        };
        report.count(&r);
        on_record(r);
        if progress.records % every == 0 {
            on_progress(&progress);
        }
    }
    on_progress(&progress);
    report.progress = progress;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;
    use crate::generate::{history, GeneratorConfig};

    fn world() -> Vec<Event> {
        history(&GeneratorConfig {
            customers: 150,
            days: 20,
            seed: 3,
            ..GeneratorConfig::default()
        })
        .collect()
    }

    fn read_all(
        path: &Path,
        mapping: Option<&CsvMapping>,
    ) -> (Vec<Event>, Vec<BadRow>, ReadReport) {
        let reader = EventReader::open(path, None, &Limits::default(), mapping).unwrap();
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        let mut last = Progress::default();
        let report = reader
            .for_each(
                100,
                |r| match r {
                    Record::Event(e) => good.push(e),
                    Record::Bad(b) => bad.push(b),
                },
                |p| {
                    assert!(p.records >= last.records && p.bytes >= last.bytes);
                    last = *p;
                },
            )
            .unwrap();
        (good, bad, report)
    }

    fn round_trip(format: FileFormat, ext: &str) {
        let events = world();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("history.{ext}"));
        let mut w = EventWriter::create(&path, format).unwrap();
        for e in &events {
            w.write(e).unwrap();
        }
        let written = w.finish().unwrap();
        assert_eq!(written.events, events.len() as u64);
        assert_eq!(written.bytes, std::fs::metadata(&path).unwrap().len());
        let (back, bad, report) = read_all(&path, None);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(back.len(), events.len());
        assert_eq!(back, events);
        assert_eq!(report.events, events.len() as u64);
        assert_eq!(report.progress.records, events.len() as u64);
        assert_eq!(report.progress.total_bytes, Some(written.bytes));
        assert!(report.progress.bytes > 0 && report.progress.bytes <= written.bytes);
    }

    #[test]
    fn ndjson_round_trip_gives_identical_events() {
        round_trip(FileFormat::Ndjson, "ndjson");
    }

    #[test]
    fn parquet_round_trip_gives_identical_events() {
        round_trip(FileFormat::Parquet, "parquet");
    }

    #[test]
    fn ndjson_bad_lines_are_counted_with_reasons_and_the_read_goes_on() {
        let events = world();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.ndjson");
        let mut text = String::new();
        for e in &events[..3] {
            text.push_str(&String::from_utf8(encode(&to_proto(e), WireFormat::Json)).unwrap());
            text.push('\n');
        }
        text.push_str("{not json\n\n");
        let mut bad_rating = to_proto(&events[0]);
        bad_rating.payload = Some(proto::event::Payload::Review(proto::Review {
            product_id: "p".into(),
            category: "c".into(),
            rating: 9,
            text: "x".into(),
        }));
        text.push_str(&String::from_utf8(encode(&bad_rating, WireFormat::Json)).unwrap());
        text.push('\n');
        text.push_str(&String::from_utf8(encode(&to_proto(&events[3]), WireFormat::Json)).unwrap());
        std::fs::write(&path, text).unwrap();
        let (good, bad, report) = read_all(&path, None);
        assert_eq!(good, events[..4].to_vec());
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].rejection.reason, Reason::InvalidJson);
        assert!(bad[0].location.ends_with(":4"), "{}", bad[0].location);
        assert_eq!(bad[1].rejection.reason, Reason::InvalidRating);
        assert_eq!(report.rejected_total(), 2);
        assert_eq!(report.rejected["invalid_json"], 1);
    }

    /// Issue 14: a whitespace-separated purchases file (customer, date,
    /// quantity, amount; no header, no kind, no product) read from the
    /// documented keys alone.
    #[test]
    fn whitespace_purchases_without_kind_or_product_from_a_toml_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.txt");
        std::fs::write(
            &path,
            "00001 19970101  1  11.77\n\
             00002   19970112 1 12.00\n\
             \t00002 19970112  5   77.00\n\
             00003 1997-01-02 2 20.76\n",
        )
        .unwrap();
        let mapping: CsvMapping = toml::from_str(
            r#"
            delimiter = "whitespace"
            header = false
            customer = "1"
            time = "2"
            time_format = "%Y%m%d"
            quantity = "3"
            amount = "4"
            amount_format = "major"
            default_kind = "purchase"
            default_product = "unknown"
            "#,
        )
        .unwrap();
        assert_eq!(FileFormat::from_path(&path), Some(FileFormat::Csv));
        let (good, bad, _) = read_all(&path, Some(&mapping));
        assert_eq!(good.len(), 3, "{bad:?}");
        assert_eq!(bad.len(), 1, "the date in another format is refused");
        assert_eq!(good[0].customer_id, "00001");
        // 1997-01-01T00:00:00Z
        assert_eq!(good[0].event_time_ms, 852_076_800_000);
        match &good[2].payload {
            Payload::Purchase(p) => {
                assert_eq!(p.total_minor, 7700);
                assert_eq!(p.items[0].quantity, 5);
                assert_eq!(p.items[0].product_id, "unknown");
            }
            other => panic!("{other:?}"),
        }
        assert!(toml::from_str::<CsvMapping>("time_format = \"yyyymmdd\"").is_err());
    }

    #[test]
    fn csv_with_a_column_mapping_and_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.csv");
        std::fs::write(
            &path,
            "user;ts;type;sku;cat;price_cents;qty;stars;comment\n\
             u1;1735732800;view;s1;shoes;4999;;;\n\
             u1;1735732860.5;cart_add;s1;shoes;4999;;;\n\
             u1;1735732900;order;s1;shoes;9998;2;;\n\
             u1;1735819200;review;s1;shoes;;;5;Great shoes\n\
             u2;yesterday;view;s2;toys;100;;;\n\
             u2;1735819200;review;s2;toys;;;9;too many stars\n\
             u2;1735819200;teleport;s2;toys;;;;\n\
             ;1735819200;view;s2;toys;;;;\n\
             u3;1735819300;search;;books;;;;\n",
        )
        .unwrap();
        let mapping = CsvMapping {
            delimiter: ";".into(),
            header: true,
            customer: "user".into(),
            time: "ts".into(),
            time_format: TimeFormat::EpochS,
            kind: "type".into(),
            default_kind: None,
            default_product: None,
            action: None,
            event_id: None,
            amount: Some("price_cents".into()),
            amount_format: AmountFormat::Minor,
            currency: None,
            default_currency: "USD".into(),
            product: Some("sku".into()),
            category: Some("cat".into()),
            quantity: Some("qty".into()),
            order_id: None,
            session: None,
            dwell_ms: None,
            rating: Some("stars".into()),
            text: Some("comment".into()),
        };
        let (good, bad, report) = read_all(&path, Some(&mapping));
        assert_eq!(good.len(), 5, "{bad:?}");
        assert_eq!(good[0].customer_id, "u1");
        assert_eq!(good[0].event_time_ms, 1_735_732_800_000);
        assert_eq!(good[0].event_id, "shop.csv:2");
        assert_eq!(good[1].event_time_ms, 1_735_732_860_500);
        match &good[2].payload {
            Payload::Purchase(p) => {
                assert_eq!(p.total_minor, 9998);
                assert_eq!(p.currency, "USD");
                assert_eq!(p.items[0].quantity, 2);
                assert_eq!(p.items[0].unit_price_minor, 4999);
            }
            other => panic!("{other:?}"),
        }
        match &good[3].payload {
            Payload::Review(r) => assert_eq!((r.rating, r.text.as_str()), (5, "Great shoes")),
            other => panic!("{other:?}"),
        }
        let reasons: Vec<Reason> = bad.iter().map(|b| b.rejection.reason).collect();
        assert_eq!(
            reasons,
            vec![
                Reason::InvalidField,
                Reason::InvalidRating,
                Reason::InvalidField,
                Reason::MissingCustomer
            ]
        );
        assert_eq!(report.rejected_total(), 4);
        // A mapping naming a column the file lacks is an error, not bad rows.
        let wrong = CsvMapping {
            customer: "client".into(),
            ..mapping
        };
        assert!(matches!(
            EventReader::open(&path, None, &Limits::default(), Some(&wrong)),
            Err(FileError::Mapping { .. })
        ));
    }

    #[test]
    fn times_and_amounts_parse_in_every_format() {
        assert_eq!(
            parse_time("2025-01-01T01:00:00+01:00", &TimeFormat::Rfc3339),
            Some(1_735_689_600_000)
        );
        assert_eq!(
            parse_time("2025-01-01T00:00:00Z", &TimeFormat::Rfc3339),
            Some(1_735_689_600_000)
        );
        assert_eq!(
            parse_time("1735689600000", &TimeFormat::EpochMs),
            Some(1_735_689_600_000)
        );
        assert_eq!(parse_time("x", &TimeFormat::EpochS), None);
        assert_eq!(parse_amount("19.99", AmountFormat::Major), Some(1999));
        assert_eq!(parse_amount("1999", AmountFormat::Minor), Some(1999));
        assert_eq!(parse_amount("19.99", AmountFormat::Minor), None);
    }
}
