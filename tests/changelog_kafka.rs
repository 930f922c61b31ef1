//! Changelog durability against the real broker: state for thousands of
//! customers written to a compacted, co-partitioned changelog topic and
//! restored into empty stores equals the original, customer by customer, in
//! state and in features; tombstones evict.

mod common;

use std::time::Duration;

use rdkafka::ClientConfig;
use tokio::time::Instant;

use segstream::event::corpus;
use segstream::event::{Decoder, Encoding, Event, Limits};
use segstream::features::{FeatureSpec, Featurizer};
use segstream::state::changelog::{drain_dirty, restore_partition, ChangelogWriter};
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
                key: key.clone(),
                value: None,
            });
            evicted.push((p, key.clone()));
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
        let mut ids: Vec<&String> = original.iter().map(|(k, _)| k).collect();
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
