//! Writing history files (NDJSON or Parquet).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use super::parquet_rows::{parquet_schema, Columns};
use super::{encode, to_proto, Event, WireFormat};
use crate::event::files::{io, FileError, FileFormat};

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
