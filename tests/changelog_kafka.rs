//! Changelog durability against the real broker: state for thousands of
//! customers written to a compacted, co-partitioned changelog topic and
//! restored into empty stores equals the original, customer by customer, in
//! state and in features; tombstones evict.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use rdkafka::ClientConfig;
use tokio::time::Instant;

use segstream::event::corpus;
use segstream::event::{Decoder, Encoding, Event, Limits};
use segstream::features::{FeatureSpec, Featurizer};
use segstream::state::changelog::{
    drain_dirty, restore_partition, ChangelogRecord, ChangelogWriter,
};
use segstream::state::{PartitionStore, RecordOutcome, StoreLimits};
use segstream::telemetry::Metrics;

const PARTITIONS: i32 = 3;
const CUSTOMERS: usize = 3000;
const T0: i64 = 1_790_000_000_000;

/// Valid events from the reference corpus, re-timed and spread over customers.
fn events_for(customer: &str, n: usize) -> Vec<Event> {
    let decoder = Decoder::new(
        Encoding::Protobuf,
        Limits {
            max_past_ms: i64::MAX / 4,
            ..Limits::default()
        },
    );
    (0..n)
        .map(|i| {
            let t = T0 + (i as i64) * 3_600_000 * 7;
            let id = format!("{customer}-{i}");
            let raw = match i % 3 {
                0 => corpus::browse(customer, &id, t),
                1 => corpus::purchase(customer, &id, t),
                _ => corpus::review(customer, &id, t),
            };
            let bytes = segstream::event::encode::encode(
                &raw,
                segstream::event::encode::WireFormat::Protobuf,
            );
            decoder
                .decode(
                    Some(customer.as_bytes()),
                    Some(&bytes),
                    T0 + 400 * 86_400_000,
                )
                .expect("corpus events are valid")
                .0
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_state_equals_the_original() {
    let topic = common::unique("it-changelog");
    common::create_topics_with(&[&topic], PARTITIONS, &[("cleanup.policy", "compact")]).await;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", common::bootstrap());

    // Build state for every customer, partitioned as the input would be.
    let limits = StoreLimits::default();
    let mut stores: Vec<PartitionStore> = (0..PARTITIONS)
        .map(|_| PartitionStore::new(limits))
        .collect();
    let now = Instant::now();
    let mut per_partition: Vec<Vec<Event>> = vec![Vec::new(); PARTITIONS as usize];
    for c in 0..CUSTOMERS {
        let customer = format!("customer-{c:05}");
        per_partition[c % PARTITIONS as usize].extend(events_for(&customer, 1 + c % 70));
    }
    for (p, mut events) in per_partition.into_iter().enumerate() {
        // In event-time order, as a partition's input arrives (give or take lateness).
        events.sort_by_key(|e| e.event_time_ms);
        for e in &events {
            assert_eq!(stores[p].record(e, now), RecordOutcome::Applied);
        }
    }
    let writer = ChangelogWriter::new(client.clone(), &topic).expect("writer");
    for (p, store) in stores.iter_mut().enumerate() {
        let records = drain_dirty(store);
        assert_eq!(records.len(), store.len());
        writer
            .write(p as i32, &records)
            .await
            .expect("write changelog");
    }
    // A second generation for some customers (compaction keeps the latest),
    // and evictions as tombstones.
    for c in (0..CUSTOMERS).step_by(10) {
        let customer = format!("customer-{c:05}");
        let p = c % PARTITIONS as usize;
        let e = &events_for(&customer, 71)[70];
        assert_eq!(stores[p].record(e, now), RecordOutcome::Applied);
    }
    let mut evicted = Vec::new();
    for (p, store) in stores.iter_mut().enumerate() {
        store.schedule_review("customer-00000", 0);
        let mut records = drain_dirty(store);
        // Evict two customers of this partition by hand-made tombstones.
        for (key, _) in store.iter().take(2) {
            records.push(segstream::state::changelog::ChangelogRecord {
                key: key.to_string(),
                value: None,
            });
            evicted.push((p, key.to_string()));
        }
        writer
            .write(p as i32, &records)
            .await
            .expect("write changelog");
    }
    for (p, key) in &evicted {
        stores[*p].forget(key);
    }

    // Restore every partition into an empty store and compare.
    let metrics = Metrics::new().unwrap();
    let spec = FeatureSpec::for_state(limits.state);
    let featurizer = Featurizer::new(spec, limits.state).unwrap();
    let mut total = 0;
    for (p, original) in stores.iter().enumerate() {
        let mut restored = PartitionStore::new(limits);
        let (client, topic_name, metrics_ref) = (client.clone(), topic.clone(), metrics.clone());
        let (restored, stats) = tokio::task::spawn_blocking(move || {
            let stats = restore_partition(
                &client,
                &topic_name,
                p as i32,
                &mut restored,
                &metrics_ref,
                Duration::from_secs(60),
            );
            (restored, stats)
        })
        .await
        .unwrap();
        let stats = stats.expect("restore");
        assert_eq!(stats.corrupt, 0);
        assert_eq!(stats.tombstones, 2);
        assert_eq!(restored.len(), original.len(), "partition {p}");
        assert_eq!(restored.watermark_ms(), original.watermark_ms());
        let mut ids: Vec<&str> = original.ids().collect();
        ids.sort();
        let as_of = T0 + 500 * 86_400_000;
        for id in &ids {
            let (a, b) = (original.get(id).unwrap(), restored.get(id).unwrap());
            assert_eq!(a, b, "state of {id}");
        }
        let a: Vec<_> = ids.iter().map(|id| original.get(id).unwrap()).collect();
        let b: Vec<_> = ids.iter().map(|id| restored.get(id).unwrap()).collect();
        assert_eq!(
            featurizer.featurize(&a, as_of).unwrap(),
            featurizer.featurize(&b, as_of).unwrap(),
            "features of partition {p}"
        );
        for (ep, key) in &evicted {
            if *ep == p {
                assert!(restored.get(key).is_none(), "{key} was evicted");
            }
        }
        total += restored.len();
    }
    assert_eq!(total, CUSTOMERS - evicted.len());
    let read: u64 = metrics.restore_records.with_label_values(&[&topic]).get();
    assert!(
        read as usize >= CUSTOMERS,
        "restore progress is counted: {read}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_an_empty_partition_finishes_at_once() {
    let topic = common::unique("it-changelog-empty");
    common::create_topics_with(&[&topic], 1, &[("cleanup.policy", "compact")]).await;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", common::bootstrap());
    let metrics = Metrics::new().unwrap();
    let stats = tokio::task::spawn_blocking(move || {
        let mut store = PartitionStore::new(StoreLimits::default());
        restore_partition(
            &client,
            &topic,
            0,
            &mut store,
            &metrics,
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap()
    .expect("restore");
    assert_eq!(stats.records, 0);
    assert_eq!(stats.customers, 0);
}

/// The previous owner's last transaction can still be open on the changelog
/// when the new owner restores (its markers are written after
/// `commit_transaction` returns). A `read_committed` read alone stops before
/// it; the restore instead waits for it to end and includes what it
/// committed, and leaves out what an aborted one wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_waits_for_an_open_transaction_to_end() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    let topic = common::unique("it-changelog-open");
    common::create_topics_with(&[&topic], 1, &[("cleanup.policy", "compact")]).await;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", common::bootstrap());
    let limits = StoreLimits::default();
    let now = Instant::now();
    let mut store = PartitionStore::new(limits);
    let mut events: Vec<Event> = ["before", "committed", "aborted"]
        .iter()
        .flat_map(|c| events_for(c, 3))
        .collect();
    events.sort_by_key(|e| e.event_time_ms);
    for e in &events {
        assert_eq!(store.record(e, now), RecordOutcome::Applied);
    }
    let records = drain_dirty(&mut store);
    let record = |key: &str| records.iter().find(|r| r.key == key).unwrap().clone();
    let writer = ChangelogWriter::new(client.clone(), &topic).expect("writer");
    writer
        .write(0, &[record("before")])
        .await
        .expect("write changelog");

    let transactional = |id: &str| {
        let mut c = client.clone();
        c.set("transactional.id", common::unique(id));
        let p: ThreadedProducer<DefaultProducerContext> = c.create().expect("producer");
        p.init_transactions(Duration::from_secs(30)).expect("init");
        p.begin_transaction().expect("begin");
        p
    };
    let send = |p: &ThreadedProducer<DefaultProducerContext>, r: &ChangelogRecord| {
        p.send(
            BaseRecord::<str, [u8]>::to(&topic)
                .partition(0)
                .key(&r.key)
                .payload(r.value.as_deref().unwrap()),
        )
        .map_err(|(e, _)| e)
        .expect("send");
        p.flush(Duration::from_secs(30)).expect("flush");
    };
    let committing = transactional("it-open-commit");
    send(&committing, &record("committed"));
    let aborting = transactional("it-open-abort");
    send(&aborting, &record("aborted"));

    let metrics = Metrics::new().unwrap();
    let (c, t) = (client.clone(), topic.clone());
    let restoring = tokio::task::spawn_blocking(move || {
        let mut restored = PartitionStore::new(limits);
        restore_partition(&c, &t, 0, &mut restored, &metrics, Duration::from_secs(60))
            .map(|_| restored)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !restoring.is_finished(),
        "the restore ended while two transactions were open"
    );
    committing
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    aborting
        .abort_transaction(Duration::from_secs(30))
        .expect("abort");
    let restored = restoring.await.unwrap().expect("restore");
    assert!(restored.get("before").is_some());
    assert!(
        restored.get("committed").is_some(),
        "the transaction open at the restore's start committed: its state is restored"
    );
    assert!(restored.get("aborted").is_none());
    assert_eq!(restored.len(), 2);
}
