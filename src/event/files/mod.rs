//! Event history in files (NDJSON, Parquet, CSV), for the generator
//! (writing) and the trainer and batch tools (reading); one module per
//! format (`ndjson`, `parquet_rows`, `csv_rows`) and the `writer`. History
//! read back from the input topics is `crate::intake::history`: this module
//! touches no Kafka.
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
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::encode::{encode, to_proto, WireFormat};
use super::validate::validate;
use super::{proto, Decoder, Encoding, Event, Limits, Reason, Rejection};

mod csv_rows;
mod ndjson;
mod parquet_rows;
#[cfg(test)]
mod tests;
mod writer;

use csv_rows::CsvSource;
pub use csv_rows::{parse_amount, parse_time, AmountFormat, CsvMapping, TimeFormat};
use ndjson::NdjsonSource;
pub use parquet_rows::parquet_schema;
use parquet_rows::ParquetSource;
pub use writer::{EventWriter, WriteReport};

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
}

impl crate::error::Classify for FileError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            FileError::Io { source, .. } => crate::error::Classify::class(source),
            FileError::Parquet { .. } | FileError::Mapping { .. } | FileError::UnknownFormat(_) => {
                crate::error::ErrorClass::BadInput
            }
        }
    }
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
    /// Counts one record read (readers outside this module, such as the
    /// input-topic history reader, report the same way).
    pub fn count(&mut self, r: &Record) {
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
