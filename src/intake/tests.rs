use std::sync::Arc;

use tokio::time::Instant;

use super::{Accepted, Applied, Intake};
use crate::config::Config;
use crate::event::encode::{encode, to_proto, WireFormat};
use crate::event::Reason;
use crate::ingest::{partition_for, SourceRecord};
use crate::privacy::Pseudonymizer;
use crate::state::tests::{buy, ev, store_limits};
use crate::state::PartitionStore;

const PARTITIONS: i32 = 4;

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.input.check_partition = true;
    cfg.privacy.erasure_topic = "erasures".into();
    cfg
}

fn intake(cfg: &Config, pseudonymizer: Option<Pseudonymizer>) -> Intake {
    let mut i = Intake::new(cfg, pseudonymizer.map(Arc::new));
    i.set_partitions(PARTITIONS);
    i
}

/// A purchase of `customer` at `time_ms`, encoded as the input carries it.
fn purchase(customer: &str, id: &str, time_ms: i64) -> Vec<u8> {
    encode(
        &to_proto(&ev(customer, id, time_ms, buy("books", 1200))),
        WireFormat::Json,
    )
}

fn record<'a>(topic: &'a str, partition: i32, key: &'a [u8], value: &'a [u8]) -> SourceRecord<'a> {
    SourceRecord {
        topic,
        partition,
        offset: 5,
        timestamp_ms: Some(1_000),
        key: Some(key),
        value: Some(value),
        headers: Vec::new(),
    }
}

fn home(cfg: &Config, customer: &str) -> i32 {
    partition_for(cfg.input.partitioner, customer.as_bytes(), PARTITIONS)
}

#[test]
fn an_event_in_its_customers_partition_is_accepted_and_one_elsewhere_is_refused() {
    let cfg = config();
    let mut i = intake(&cfg, None);
    let topic = i.topic(&cfg.input.topics[0]);
    let value = purchase("c1", "e1", 10_000);
    let p = home(&cfg, "c1");
    match i.accept(&record(&topic, p, b"c1", &value), &topic, 0) {
        Accepted::Event(e) => {
            assert_eq!(e.event.customer_id, "c1");
            assert_eq!(e.partition, p);
        }
        other => panic!("{other:?}"),
    }
    let elsewhere = (p + 1) % PARTITIONS;
    match i.accept(&record(&topic, elsewhere, b"c1", &value), &topic, 0) {
        Accepted::Refused(d) => assert_eq!(d.reason, Reason::WrongPartition),
        other => panic!("{other:?}"),
    }
    // Until the partition count is known, nothing is refused for it.
    let unknown = Intake::new(&cfg, None);
    assert!(matches!(
        unknown.accept(&record(&topic, elsewhere, b"c1", &value), &topic, 0),
        Accepted::Event(_)
    ));
}

#[test]
fn a_pseudonymizing_intake_stores_the_pseudonym() {
    let cfg = config();
    let key = b"0123456789abcdef";
    let mut i = intake(&cfg, Some(Pseudonymizer::new(key).unwrap()));
    let topic = i.topic(&cfg.input.topics[0]);
    let value = purchase("c1", "e1", 10_000);
    let Accepted::Event(e) = i.accept(&record(&topic, home(&cfg, "c1"), b"c1", &value), &topic, 0)
    else {
        panic!("refused");
    };
    assert_eq!(
        e.event.customer_id,
        Pseudonymizer::new(key).unwrap().apply("c1")
    );
    assert_ne!(e.event.customer_id, "c1");
}

#[test]
fn an_erasure_request_needs_a_key_and_erases_up_to_its_time() {
    let cfg = config();
    let mut i = intake(&cfg, None);
    let topic = i.topic("erasures");
    let r = record(&topic, 1, b"c1", br#"{"as_of_ms": 700}"#);
    match i.accept(&r, &topic, 9_999) {
        Accepted::Erasure(e) => {
            assert_eq!((e.partition, e.id.as_str(), e.through_ms), (1, "c1", 700));
        }
        other => panic!("{other:?}"),
    }
    // No time in the value: the record's timestamp.
    let r = record(&topic, 1, b"c1", b"{}");
    assert!(matches!(i.accept(&r, &topic, 9_999), Accepted::Erasure(e) if e.through_ms == 1_000));
    let r = record(&topic, 1, b"", b"{}");
    match i.accept(&r, &topic, 9_999) {
        Accepted::Refused(d) => assert_eq!(d.reason, Reason::MissingCustomer),
        other => panic!("{other:?}"),
    }
    // A reader's intake has no erasure topic: a record there is input,
    // decoded as an event.
    let mut reader = Intake::reader(&cfg);
    let topic = reader.topic("erasures");
    let r = record(&topic, 1, b"c1", b"not json");
    assert!(
        matches!(reader.accept(&r, &topic, 0), Accepted::Refused(d) if d.reason == Reason::InvalidJson)
    );
}

#[test]
fn apply_changes_state_once_and_refuses_what_is_behind_the_watermark() {
    let mut cfg = config();
    cfg.output.risk_topic = "risk".into();
    let i = intake(&cfg, None);
    let mut store = PartitionStore::new(store_limits());
    let e = ev("c1", "e1", 100 * 86_400_000, buy("books", 1200));
    let now = Instant::now();
    assert!(matches!(
        i.apply(&mut store, &e, None, now),
        Applied::Changed { .. }
    ));
    assert_eq!(i.apply(&mut store, &e, None, now), Applied::Duplicate);
    let old = ev("c2", "e2", 0, buy("books", 1200));
    assert!(matches!(
        i.apply(&mut store, &old, None, now),
        Applied::Late { .. }
    ));
    assert_eq!(store.len(), 1);
}
