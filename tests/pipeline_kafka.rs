//! The run loop against the real broker, with `segstream run` as a child
//! process: crashes (SIGKILL at random moments, then restart), instances
//! joining and leaving, and inactivity timers. A verifier reads the output,
//! changelog and dead-letter topics with read_committed and checks every
//! customer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use rand::Rng as _;
use rdkafka::producer::{FutureProducer, FutureRecord};

use common::pipeline::*;
use segstream::event::corpus::{browse, purchase};
use segstream::event::encode::{encode, WireFormat};
use segstream::event::proto;
use segstream::ingest::now_ms;

/// `pipeline.max_cycle_records` of the crash test.
const CYCLE_RECORDS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_lose_nothing_and_duplicate_nothing() {
    common::require_onnxruntime();
    let mut s = setup().await;
    // Most cycles end on their record count, not on the clock: the kills
    // land between count-ended commits too.
    s.configure(|c| {
        c.pipeline.max_cycle_records = CYCLE_RECORDS;
        c.pipeline.commit_interval = Duration::from_secs(1);
    });
    let producing = tokio::spawn(produce_stream(topics(&s), 10.0));
    // Run, SIGKILL at random moments, restart; then run to the end.
    let log = s.dir.path().join("run.log");
    let debug = [("RUST_LOG", "warn,segstream=info,segstream::pipeline=debug")];
    for _ in 0..3 {
        let mut child = start_env(&s.config, &log, &debug);
        let wait = rand::rng().random_range(2_000..5_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }
    let stream = producing.await.unwrap();
    let mut children = vec![start_env(&s.config, &log, &debug)];
    wait_consumed(&s, &mut children, &log).await;
    // Two stream threads, each with its own transactional producer.
    let text = std::fs::read_to_string(&log).unwrap();
    // A cycle ends after the record that reaches the cap; one record can
    // release a few held by the event-time merge, hence the small margin.
    // Ended by the 1 s clock instead, cycles would hold hundreds.
    let at_cap = text
        .lines()
        .filter(|l| l.contains("Committed a cycle."))
        .filter_map(|l| {
            l.split("records=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .filter(|n| (CYCLE_RECORDS..CYCLE_RECORDS + 5).contains(n))
        .count();
    assert!(
        at_cap >= 10,
        "{at_cap} cycles ended at pipeline.max_cycle_records = {CYCLE_RECORDS}:\n{}",
        tail(&log)
    );
    for id in ["-instance-0", "-instance-1"] {
        assert!(text.contains(id), "no producer {id}:\n{}", tail(&log));
    }
    // Graceful stop (SIGTERM) commits the open cycle.
    let child = &mut children[0];
    sigterm(child);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "segstream run exit: {status}:\n{}",
        tail(&log)
    );
    verify(&s, &stream);
}

/// Instances join and leave the group mid-stream (gracefully and by
/// SIGKILL); partitions and their state move between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_lose_nothing_and_duplicate_nothing() {
    common::require_onnxruntime();
    let s = setup().await;
    let producing = tokio::spawn(produce_stream(topics(&s), 12.0));
    let log = s.dir.path().join("run.log");
    let mut a = start_as(&s.config, &log, "a");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut b = start_as(&s.config, &log, "b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut c = start_as(&s.config, &log, "c");
    tokio::time::sleep(Duration::from_secs(4)).await;
    sigterm(&b);
    assert!(
        b.wait().unwrap().success(),
        "b stops cleanly:\n{}",
        tail(&log)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill().unwrap();
    c.wait().unwrap();
    let stream = producing.await.unwrap();
    let mut b2 = start_as(&s.config, &log, "b");
    wait_consumed(&s, std::slice::from_mut(&mut a), &log).await;
    for child in [&mut a, &mut b2] {
        sigterm(child);
        assert!(
            child.wait().unwrap().success(),
            "clean stop:\n{}",
            tail(&log)
        );
    }
    verify(&s, &stream);
}

/// Customers who stop buying move to `at_risk` through inactivity timers as
/// event time advances (driven by other customers' events), without any
/// event of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_customers_become_at_risk_by_inactivity() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set; run `make test`"
    );
    let mut s = setup_with(1, "rules").await;
    s.configure(|c| c.state.review_after = Duration::from_secs(86_400));
    let producer: FutureProducer = client().create().unwrap();
    let send = |topic: &str, key: String, value: Vec<u8>| {
        let producer = producer.clone();
        let topic = topic.to_string();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    let day = 86_400_000;
    let start_ms = now_ms() - 10 * day;
    let silent: Vec<String> = (0..20).map(|i| format!("silent-{i:02}")).collect();
    for (i, c) in silent.iter().enumerate() {
        let e = purchase(c, &format!("{c}-p"), start_ms + i as i64 * 60_000);
        send(&s.purchase, c.clone(), encode(&e, WireFormat::Protobuf)).await;
    }
    let log = s.dir.path().join("run.log");
    let mut child = start(&s.config, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while outputs(&s).len() < silent.len() {
        assert!(
            Instant::now() < deadline,
            "first classifications missing:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Another customer keeps browsing for nine days (every six hours).
    for k in 0..36 {
        let t = start_ms + day + k * 6 * 3_600_000;
        let e = browse("busy", &format!("busy-{k}"), t);
        send(&s.browse, "busy".into(), encode(&e, WireFormat::Json)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let chains = outputs(&s);
        let done = silent
            .iter()
            .all(|c| chains.get(c).is_some_and(|v| v.len() >= 2));
        if done {
            for c in &silent {
                let chain = &chains[c];
                assert_eq!(chain.len(), 2, "{c}: {chain:?}");
                assert_eq!(chain[0].segment, "active_buyer", "{c}");
                assert_eq!(chain[0].trigger, proto::Trigger::Event as i32);
                assert_eq!(chain[1].previous_segment, "active_buyer", "{c}");
                assert_eq!(chain[1].segment, "at_risk", "{c}");
                assert_eq!(chain[1].trigger, proto::Trigger::Inactivity as i32, "{c}");
                assert!(
                    chain[1].as_of_ms - chain[0].as_of_ms >= day,
                    "{c}: as of later event time"
                );
                assert!(
                    chain[1].churn_probability > chain[0].churn_probability,
                    "{c}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no inactivity moves:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

/// The input contract's partitioning (issue 16): with either partitioner
/// configured, an event in the partition its customer id hashes to is
/// applied, and the same customer's event in another partition is
/// dead-lettered as `wrong_partition` instead of silently starting a
/// second state for the customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_another_partition_are_dead_lettered_under_either_partitioner() {
    use segstream::config::Partitioner;
    use segstream::pipeline::directory::partition_for;
    for partitioner in [Partitioner::Crc32, Partitioner::Murmur2] {
        let partitions = 3;
        let s = setup_with(partitions, "rules").await;
        let producer: FutureProducer = client().create().unwrap();
        let t0 = now_ms() - 3_600_000;
        let customers: Vec<String> = (0..24).map(|i| format!("pt-{i}")).collect();
        let mut wrong = std::collections::BTreeMap::new();
        for (i, c) in customers.iter().enumerate() {
            let right = partition_for(partitioner, c.as_bytes(), partitions);
            let other = (right + 1) % partitions;
            wrong.insert(c.clone(), other);
            for (topic, event, p) in [
                (
                    &s.browse,
                    browse(c, &format!("{c}-b"), t0 + i as i64),
                    right,
                ),
                (
                    &s.purchase,
                    purchase(c, &format!("{c}-p"), t0 + i as i64 + 1),
                    other,
                ),
            ] {
                let value = encode(&event, WireFormat::Protobuf);
                producer
                    .send(
                        FutureRecord::to(topic).key(c).payload(&value).partition(p),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        }
        let log = s.dir.path().join("run.log");
        let name = partitioner.as_str();
        let mut children = vec![start_as_with(
            &s.config,
            &log,
            "a",
            &[("SEGSTREAM__INPUT__PARTITIONER", name)],
        )];
        wait_consumed(&s, &mut children, &log).await;
        sigterm(&children[0]);
        let status = children[0].wait().unwrap();
        assert!(
            status.success(),
            "{name}: clean stop: {status}\n{}",
            tail(&log)
        );

        let dead = read_all(&s.dlq);
        assert_eq!(
            dead.len(),
            customers.len(),
            "{name}: one dead letter per customer"
        );
        for (_, _, key, _, headers) in &dead {
            let header = |k: &str| header_value(headers, k).unwrap_or_default();
            let customer = String::from_utf8(key.clone().unwrap()).unwrap();
            assert_eq!(header("segstream.dlq.reason"), "wrong_partition", "{name}");
            assert_eq!(header("segstream.dlq.source.topic"), s.purchase, "{name}");
            assert_eq!(
                header("segstream.dlq.source.partition"),
                wrong[&customer].to_string(),
                "{name}: {customer}"
            );
            assert!(header("segstream.dlq.message").contains(name), "{name}");
        }
        // Every customer's state holds its one accepted event, in its partition.
        let states = read_all(&s.changelog);
        let mut seen = std::collections::BTreeSet::new();
        for (p, _, key, value, _) in &states {
            let customer = String::from_utf8(key.clone().unwrap()).unwrap();
            assert!(value.is_some(), "{name}: {customer}");
            assert_eq!(
                *p,
                partition_for(partitioner, customer.as_bytes(), partitions)
            );
            seen.insert(customer);
        }
        assert_eq!(seen.len(), customers.len(), "{name}");
    }
}
