//! Ingestion against the real broker: valid events in every wire format are
//! decoded to the right internal events; every record of the bad-input corpus
//! lands in the dead-letter topic with its exact reason, its original bytes,
//! key and headers, and its source coordinates. Nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use segstream::config::Config;
use segstream::event::corpus::{bad_records, browse, purchase, review, BadRecord};
use segstream::event::encode::{encode, WireFormat};
use segstream::event::{proto, Decoder, Encoding, Limits, Reason};
use segstream::ingest::{header, now_ms, DeadLetterSink};
use segstream::intake::Ingestor;
use segstream::telemetry::Metrics;

const HUGE: usize = 10 * 1024 * 1024;

struct Produced {
    topic: String,
    partition: i32,
    offset: i64,
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: Option<OwnedHeaders>,
) -> Produced {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    Produced {
        topic: topic.to_string(),
        partition: delivery.partition,
        offset: delivery.offset,
    }
}

fn header_str(h: &rdkafka::message::BorrowedHeaders, key: &str) -> Option<String> {
    h.iter()
        .find(|x| x.key == key)
        .and_then(|x| x.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_events_decode_and_bad_records_reach_the_dead_letter_topic() {
    let browse_t = common::unique("it-browse");
    let purchase_t = common::unique("it-purchase");
    let review_t = common::unique("it-review");
    let dlq_t = common::unique("it-dlq");
    common::create_topics(&[&browse_t, &purchase_t, &review_t], 3).await;
    common::create_topics(&[&dlq_t], 1).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("message.max.bytes", (HUGE + 1024 * 1024).to_string())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");

    // Valid events: every kind in every wire format, across many customers
    // (so every partition gets some).
    let now = now_ms();
    let mut valid: HashMap<String, proto::Event> = HashMap::new();
    let mut n = 0;
    for c in 0..8 {
        let customer = format!("cust-{c}");
        for format in WireFormat::ALL {
            for (make, topic) in [
                (browse as fn(&str, &str, i64) -> proto::Event, &browse_t),
                (purchase, &purchase_t),
                (review, &review_t),
            ] {
                n += 1;
                let id = format!("ev-{n}");
                let event = make(&customer, &id, now - 60_000 - n);
                produce(
                    &producer,
                    topic,
                    Some(customer.as_bytes()),
                    &encode(&event, format),
                    None,
                )
                .await;
                valid.insert(id, event);
            }
        }
    }

    // Bad records, spread over the three topics, one of them with headers
    // that must survive into the dead letter.
    let mut expected_bad: HashMap<(String, i32, i64), BadRecord> = HashMap::new();
    let topics = [&browse_t, &purchase_t, &review_t];
    for (i, bad) in bad_records("cust-bad", now, HUGE).into_iter().enumerate() {
        let headers = (i == 0).then(|| {
            OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some("00-abc-def-01"),
            })
        });
        let at = produce(
            &producer,
            topics[i % 3],
            bad.key.as_deref(),
            &bad.value,
            headers,
        )
        .await;
        expected_bad.insert((at.topic, at.partition, at.offset), bad);
    }
    let total = valid.len() + expected_bad.len();

    // Ingest everything.
    let mut config = Config::default();
    config.kafka.bootstrap_servers = common::bootstrap();
    config.kafka.group_id = common::unique("it-group");
    config.input.topics = vec![browse_t.clone(), purchase_t.clone(), review_t.clone()];
    config.dead_letter.topic = dlq_t.clone();
    let metrics = Metrics::new().unwrap();
    let mut ingestor = Ingestor::build(&config, metrics.clone()).expect("ingestor");
    let sink = DeadLetterSink::build(&config).expect("dead-letter sink");
    ingestor
        .subscribe(Duration::from_secs(10))
        .expect("subscribe");

    let mut events = Vec::new();
    let mut dead = 0;
    let mut next_offsets = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while events.len() + dead < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} records ingested in 90 s",
            events.len() + dead
        );
        let batch = ingestor
            .next_batch(Duration::from_millis(500))
            .await
            .expect("batch");
        sink.send_all(&batch.dead_letters)
            .await
            .expect("dead letters written");
        dead += batch.dead_letters.len();
        next_offsets.extend(batch.next_offsets.clone());
        events.extend(batch.events);
    }
    assert_eq!(events.len(), valid.len(), "valid events decoded");
    assert_eq!(dead, expected_bad.len(), "records dead-lettered");

    // The assignment covers all nine input partitions; positions follow reads.
    let mut assignment = ingestor.assignment().unwrap();
    assignment.sort();
    assert_eq!(assignment.len(), 9, "{assignment:?}");
    for (topic, partition, position) in ingestor.positions().unwrap() {
        if let Some(next) = next_offsets.get(&(topic.as_str().into(), partition)) {
            assert_eq!(position, Some(*next), "{topic}[{partition}]");
        }
    }

    // Every valid event arrived once, decoded to what its producer meant.
    let reference = Decoder::new(Encoding::Protobuf, Limits::default());
    let mut seen = HashMap::new();
    for e in &events {
        let source = valid
            .get(&e.event.event_id)
            .unwrap_or_else(|| panic!("unexpected event {}", e.event.event_id));
        let (expected, _) = reference
            .decode(
                Some(source.customer_id.as_bytes()),
                Some(&encode(source, WireFormat::Protobuf)),
                now,
            )
            .unwrap();
        assert_eq!(e.event, expected);
        assert_eq!(
            e.topic.as_ref(),
            match e.event.kind() {
                segstream::event::EventKind::Browse => browse_t.as_str(),
                segstream::event::EventKind::Purchase => purchase_t.as_str(),
                segstream::event::EventKind::Review => review_t.as_str(),
            }
        );
        *seen.entry(e.event.event_id.clone()).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&c| c == 1), "duplicates: {seen:?}");
    assert_eq!(seen.len(), valid.len());

    // Every bad record is in the dead-letter topic with reason, bytes and source.
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("group.id", common::unique("it-dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.subscribe(&[&dlq_t]).unwrap();
    let mut found = 0;
    let mut per_reason: BTreeMap<Reason, u64> = BTreeMap::new();
    while found < expected_bad.len() {
        let msg = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .expect("dead letters arrive within 30 s")
            .unwrap();
        let h = msg.headers().expect("dead letters carry headers");
        let coords = (
            header_str(h, header::TOPIC).unwrap(),
            header_str(h, header::PARTITION)
                .unwrap()
                .parse::<i32>()
                .unwrap(),
            header_str(h, header::OFFSET)
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
        let bad = expected_bad
            .get(&coords)
            .unwrap_or_else(|| panic!("dead letter for unknown source {coords:?}"));
        let (name, reason, key, value) = (bad.name, &bad.expected, &bad.key, &bad.value);
        assert_eq!(
            header_str(h, header::REASON).as_deref(),
            Some(reason.as_str()),
            "{name}"
        );
        assert_eq!(
            header_str(h, header::STAGE).as_deref(),
            Some(reason.stage().as_str()),
            "{name}"
        );
        assert!(
            !header_str(h, header::MESSAGE).unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(msg.key().map(<[u8]>::to_vec), *key, "{name}: key kept");
        assert_eq!(
            header_str(h, header::ORIGINAL_SIZE).unwrap(),
            value.len().to_string(),
            "{name}"
        );
        let payload = msg.payload().unwrap_or_default();
        if value.len() > config.dead_letter.max_value_bytes {
            assert_eq!(
                header_str(h, header::TRUNCATED).as_deref(),
                Some("true"),
                "{name}"
            );
            assert_eq!(
                payload,
                &value[..config.dead_letter.max_value_bytes],
                "{name}"
            );
        } else {
            assert_eq!(
                header_str(h, header::TRUNCATED).as_deref(),
                Some("false"),
                "{name}"
            );
            assert_eq!(payload, value.as_slice(), "{name}: original bytes kept");
        }
        if name == "empty value" {
            assert_eq!(
                header_str(h, "traceparent").as_deref(),
                Some("00-abc-def-01"),
                "original headers kept"
            );
        }
        *per_reason.entry(*reason).or_default() += 1;
        found += 1;
    }
    // Counted, per reason, exactly.
    for (reason, n) in per_reason {
        assert_eq!(metrics.dead_lettered(reason), n, "{}", reason.as_str());
    }
    let accepted: u64 = segstream::event::EventKind::ALL
        .iter()
        .map(|k| {
            [&browse_t, &purchase_t, &review_t]
                .iter()
                .map(|t| metrics.accepted(t, *k))
                .sum::<u64>()
        })
        .sum();
    assert_eq!(accepted as usize, valid.len());
}
