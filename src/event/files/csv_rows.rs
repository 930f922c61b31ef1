//! CSV and whitespace-separated history read through a documented column mapping.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::parquet_rows::action_code;
use super::{proto, Limits, Reason, Rejection};
use crate::event::files::{finish, BadRow, FileError, Record};

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

pub(super) struct CsvSource {
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
    pub(super) fn new(inner: R) -> Self {
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
    pub(super) fn new(
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

    pub(super) fn next(&mut self, bytes: &mut u64) -> Option<Result<Record, FileError>> {
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
