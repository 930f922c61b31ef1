//! Parquet history: the flat event schema, its reader and the writer's column buffers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde::{Deserialize, Serialize};

use super::{proto, Event, Limits, Reason, Rejection};
use crate::event::files::{finish, BadRow, FileError, Record};

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

pub(super) struct ParquetSource {
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
    pub(super) fn new(path: &Path, file: File, limits: Limits) -> Result<Self, FileError> {
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

    pub(super) fn next(&mut self, bytes: &mut u64) -> Option<Result<Record, FileError>> {
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
    // A missing column or a null cell reads as empty or zero, as an absent
    // protobuf field does: validation refuses a missing required value with
    // its reason code.
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

pub(super) fn action_code(name: &str) -> i32 {
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
pub(super) struct Columns {
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
    pub(super) fn push(&mut self, e: &Event) {
        use crate::event::Payload;
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

    pub(super) fn len(&self) -> usize {
        self.event_id.len()
    }

    pub(super) fn take_batch(
        &mut self,
        schema: &SchemaRef,
    ) -> Result<RecordBatch, arrow_schema::ArrowError> {
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
