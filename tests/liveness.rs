//! No silent stall (issue 13): a transactional call that never returns
//! (librdkafka#5456, injected here with `SEGSTREAM_FAULT_HANG`) ends the
//! instance within `pipeline.call_deadline`; its partitions move to a healthy
//! member, the restarted instance fences the stuck producer, and the
//! verifier finds every event exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::pipeline::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_transactional_call_ends_the_instance_and_its_partitions_move() {
    common::require_onnxruntime();
    let mut s = setup().await;
    s.configure(|c| {
        c.pipeline.call_deadline = Duration::from_secs(6);
        c.pipeline.stall_timeout = Duration::from_secs(20);
    });
    let producing = tokio::spawn(produce_stream(topics(&s), 8.0));
    let log_a = s.dir.path().join("a.log");
    let log_b = s.dir.path().join("b.log");
    // `a` hangs in its 5th send_offsets_to_transaction, as the bug does.
    let mut a = start_as_with(
        &s.config,
        &log_a,
        "a",
        &[("SEGSTREAM_FAULT_HANG", "send_offsets_to_transaction@5")],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut b = start_as(&s.config, &log_b, "b");

    // `a` ends by itself, with the stall status and one clear line.
    let status = wait_exit(&mut a, &log_a, Duration::from_secs(120)).await;
    assert_eq!(
        status.code(),
        Some(3),
        "exit status of a stalled instance:\n{}",
        tail(&log_a)
    );
    let text = std::fs::read_to_string(&log_a).unwrap();
    assert!(
        text.contains("blocked past pipeline.call_deadline")
            && text.contains("send_offsets_to_transaction"),
        "the log names the hung call:\n{}",
        tail(&log_a)
    );
    assert!(
        b.try_wait().unwrap().is_none(),
        "b keeps running:\n{}",
        tail(&log_b)
    );

    // Its partitions move to `b`, which consumes everything; the stuck
    // transaction is aborted by the broker's transaction timeout.
    let stream = producing.await.unwrap();
    wait_consumed(&s, std::slice::from_mut(&mut b), &log_b).await;
    // The orchestrator restarts `a` (same transactional id, no fault): it
    // fences the stuck producer's epoch and rejoins the group.
    let log_a2 = s.dir.path().join("a2.log");
    let mut a2 = start_as(&s.config, &log_a2, "a");
    let started = Instant::now();
    while !std::fs::read_to_string(&log_a2)
        .unwrap_or_default()
        .contains("Partitions assigned and restored.")
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the restarted a never got partitions:\n{}",
            tail(&log_a2)
        );
        assert!(
            a2.try_wait().unwrap().is_none(),
            "a2 exited:\n{}",
            tail(&log_a2)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_consumed(&s, std::slice::from_mut(&mut b), &log_b).await;
    for (child, log) in [(&mut a2, &log_a2), (&mut b, &log_b)] {
        sigterm(child);
        assert!(
            child.wait().unwrap().success(),
            "clean stop:\n{}",
            tail(log)
        );
    }
    for log in [&log_a, &log_a2, &log_b] {
        keep_log(log);
    }
    verify(&s, &stream);
}

/// Event-time alignment (issue 13): a 90-day history produced topic by
/// topic (all browse, then all purchases, then all reviews) is merged by
/// event time within each partition: no event is refused as `late`, and
/// every customer's state equals the state from the same events in one
/// topic, with default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_produced_topic_by_topic_yields_no_late_events() {
    use rand::Rng as _;
    use segstream::event::corpus::{browse, purchase, review};
    use segstream::event::encode::{encode, WireFormat};
    use segstream::ingest::now_ms;
    use segstream::state::changelog;

    common::require_onnxruntime();
    const DAY: i64 = 86_400_000;
    let now = now_ms();
    // (kind, customer, id, time): 300 customers, about 20 events each,
    // spread over the last 88 days.
    let mut events = Vec::new();
    {
        let mut rng = rand::rng();
        for c in 0..300 {
            let customer = format!("hist-{c:04}");
            for i in 0..rng.random_range(10..30) {
                let at = now - 88 * DAY + rng.random_range(0..88 * DAY - 60_000);
                let kind = [0u8, 0, 0, 1, 2][rng.random_range(0..5)];
                events.push((kind, customer.clone(), format!("{customer}-{i}"), at));
            }
        }
    }
    events.sort_by_key(|e| e.3);
    let value = |(kind, customer, id, at): &(u8, String, String, i64)| {
        let e = match kind {
            0 => browse(customer, id, *at),
            1 => purchase(customer, id, *at),
            _ => review(customer, id, *at),
        };
        encode(&e, WireFormat::Protobuf)
    };

    // Topic by topic, each in event-time order.
    let split = setup().await;
    let mut records = Vec::new();
    for (kind, topic) in [(0, &split.browse), (1, &split.purchase), (2, &split.review)] {
        for e in events.iter().filter(|e| e.0 == kind) {
            records.push((topic.clone(), e.1.clone(), value(e)));
        }
    }
    produce_records(records).await;
    // The reference: the same events in one topic, in event-time order.
    let single = setup().await;
    let records = events
        .iter()
        .map(|e| (single.browse.clone(), e.1.clone(), value(e)))
        .collect();
    produce_records(records).await;

    let mut states = Vec::new();
    for s in [&split, &single] {
        let log = s.dir.path().join("run.log");
        let mut child = start(&s.config, &log);
        wait_consumed(s, std::slice::from_mut(&mut child), &log).await;
        sigterm(&child);
        assert!(
            child.wait().unwrap().success(),
            "clean stop:\n{}",
            tail(&log)
        );
        keep_log(&log);
        let letters = read_all(&s.dlq);
        let described: Vec<String> = letters
            .iter()
            .map(|(_, _, _, _, headers)| {
                headers
                    .iter()
                    .filter(|(k, _)| k.starts_with("segstream.dlq."))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert!(
            letters.is_empty(),
            "{} records of {} dead-lettered:\n{}\n{}",
            letters.len(),
            if std::ptr::eq(s, &split) {
                "the split run"
            } else {
                "the single-topic run"
            },
            described.join("\n"),
            tail(&log)
        );
        let mut latest = std::collections::BTreeMap::new();
        for (_, _, key, value, _) in read_all(&s.changelog) {
            latest.insert(String::from_utf8(key.unwrap()).unwrap(), value);
        }
        let by_customer: std::collections::BTreeMap<String, _> = latest
            .into_iter()
            .map(|(k, v)| {
                let mut state = changelog::decode(&v.expect("no tombstone")).unwrap();
                // Decisions depend on when scoring ran; the facts must not.
                state.decision = Default::default();
                (k, state)
            })
            .collect();
        states.push(by_customer);
    }
    assert_eq!(states[0].len(), 300, "every customer in state");
    let events_in = |s: &segstream::state::CustomerState| -> u64 {
        s.days()
            .iter()
            .map(|d| u64::from(d.browse) + u64::from(d.purchases) + u64::from(d.reviews))
            .sum()
    };
    let total: u64 = states[0].values().map(events_in).sum();
    assert_eq!(total, events.len() as u64, "every event in state");
    for (customer, state) in &states[0] {
        assert_eq!(
            Some(state),
            states[1].get(customer),
            "{customer}: state from three topics equals state from one"
        );
    }
}

/// Regression (issue 16): a changelog topic that deletes instead of
/// compacting would lose state older than its retention at the next
/// restore; the instance refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_that_is_not_compacted_is_refused_at_start() {
    common::require_onnxruntime();
    let s = setup().await;
    let deleting = format!("{}-delete", s.changelog);
    common::create_topics(&[&deleting], PARTITIONS).await;
    let log = s.dir.path().join("run.log");
    let mut child = start_as_with(
        &s.config,
        &log,
        "a",
        &[("SEGSTREAM__STATE__CHANGELOG_TOPIC", deleting.as_str())],
    );
    let status = wait_exit(&mut child, &log, Duration::from_secs(60)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    // A misconfigured topic is bad input: exit status 2, no restart loop
    // will fix it.
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(
        text.contains("must be compacted (cleanup.policy=compact), it has cleanup.policy=delete"),
        "{text}"
    );
}
