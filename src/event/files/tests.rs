//! Round trips and refusals of every history format.
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

fn read_all(path: &Path, mapping: Option<&CsvMapping>) -> (Vec<Event>, Vec<BadRow>, ReadReport) {
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
