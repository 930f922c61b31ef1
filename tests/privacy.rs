//! Privacy (issue 17): pseudonymous ids reach no topic, metric or log in
//! clear; `segstream forget` erases a customer for good (a restore after a
//! crash brings nothing back; `predict` on the topics skips them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::pipeline::*;
use prost::Message as _;
use segstream::event::proto::{Membership, SegmentChange, Trigger};
use segstream::privacy::Pseudonymizer;

const KEY: &str = "a-test-key-of-enough-bytes-0123";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// With `privacy.pseudonymize`, every record of the output, current and
/// changelog topics, the metrics, a lookup's answer and the log hold only
/// pseudonyms (the dead-letter topic keeps producers' bytes by design).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudonymized_ids_never_appear_in_clear() {
    common::require_onnxruntime();
    let mut s = setup().await;
    // The key as a deployment mounts it: a file only the instance reads.
    let key_file = s.dir.path().join("privacy.key");
    std::fs::write(&key_file, KEY).unwrap();
    s.configure(|c| {
        c.privacy.pseudonymize = true;
        c.privacy.key_file = key_file;
    });
    let stream = produce_stream(topics(&s), 1.0).await;
    let log = s.dir.path().join("run.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = start_as_with(
        &s.config,
        &log,
        "a",
        &[("SEGSTREAM__PIPELINE__HTTP_LISTEN", &listen)],
    );
    wait_consumed(&s, std::slice::from_mut(&mut child), &log).await;
    let metrics = get(port, "/metrics").unwrap().1;
    let some = stream.produced.keys().next().unwrap().clone();
    let (status, _, answer) = get_settled(port, &format!("/v1/customers/{some}")).unwrap();
    sigterm(&child);
    assert!(
        child.wait().unwrap().success(),
        "clean stop:\n{}",
        tail(&log)
    );

    let p = Pseudonymizer::new(KEY.as_bytes()).unwrap();
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["customer_id"], p.apply(&some));

    let clear: Vec<&String> = stream.produced.keys().collect();
    let mut keys = std::collections::BTreeSet::new();
    for topic in [&s.output, &s.current, &s.changelog, &s.risk] {
        let rows = read_all(topic);
        assert!(topic == &s.risk || !rows.is_empty(), "{topic} has records");
        for (_, _, key, value, headers) in rows {
            let key = key.unwrap();
            if *topic == s.changelog {
                keys.insert(String::from_utf8(key.clone()).unwrap());
            }
            let mut bytes = key;
            bytes.extend(value.unwrap_or_default());
            for (k, v) in headers {
                bytes.extend(k.into_bytes());
                bytes.extend(v.into_bytes());
            }
            for c in &clear {
                assert!(!contains(&bytes, c.as_bytes()), "{c} in clear in {topic}");
            }
        }
    }
    let expected: std::collections::BTreeSet<String> = clear.iter().map(|c| p.apply(c)).collect();
    assert_eq!(
        keys, expected,
        "the changelog holds every customer, by pseudonym"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for c in &clear {
        assert!(!metrics.contains(c.as_str()), "{c} in the metrics");
        assert!(!text.contains(c.as_str()), "{c} in the log");
    }
    assert!(!text.contains(KEY), "the key is never logged");
}

/// `forget` removes a customer's state from the running instance (changelog
/// and current-topic tombstones, an EXITED/ERASED change, a pseudonymous
/// audit entry); after a SIGKILL the restore brings nothing of them back,
/// and `predict` on the topics leaves them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_erases_for_good() {
    common::require_onnxruntime();
    let mut s = setup().await;
    let (erasure, audit) = (format!("{}.erasure", s.group), format!("{}.audit", s.group));
    common::create_topics(&[&erasure], PARTITIONS).await;
    common::create_topics(&[&audit], 1).await;
    s.configure(|c| {
        c.privacy.erasure_topic = erasure.clone();
        c.privacy.audit_topic = audit.clone();
    });

    let stream = produce_stream(topics(&s), 1.0).await;
    let log = s.dir.path().join("run.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("SEGSTREAM__PIPELINE__HTTP_LISTEN", listen.as_str())];
    let mut child = start_as_with(&s.config, &log, "a", &env);
    wait_consumed(&s, std::slice::from_mut(&mut child), &log).await;
    // A lookup during a rebalance (the stream threads joining one by one, a
    // restore, a killed member's partitions until its session times out) is
    // a 503 with Retry-After: `get_settled` asks until the answer is final.
    // A failure shows the last answer's body (which 503 it was) and the log.
    let expect = |c: &str, want: u16| {
        let (status, _, body) =
            get_settled(port, &format!("/v1/customers/{c}")).expect("the HTTP endpoint answers");
        assert_eq!(status, want, "lookup of {c}: {body}\nlog:\n{}", tail(&log));
    };
    let customers: Vec<String> = stream.produced.keys().cloned().collect();
    let (gone, kept) = (&customers[..2], &customers[2..]);
    expect(&gone[0], 200);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_segstream"))
        .args(["forget", "-c"])
        .arg(&s.config)
        .args(["--customer", &gone[0], "--customer", &gone[1]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Applied by the running instance: tombstones in the changelog.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut latest: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for (_, _, k, v, _) in read_all(&s.changelog) {
            latest.insert(String::from_utf8(k.unwrap()).unwrap(), v);
        }
        if gone
            .iter()
            .all(|c| latest.get(c).is_some_and(Option::is_none))
        {
            assert!(kept
                .iter()
                .all(|c| latest.get(c).is_some_and(Option::is_some)));
            break;
        }
        assert!(Instant::now() < deadline, "no tombstones:\n{}", tail(&log));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    expect(&gone[0], 404);
    child.kill().unwrap();
    child.wait().unwrap();

    // The current topic drops them; the change stream says why.
    let mut current: BTreeMap<String, bool> = BTreeMap::new();
    for (_, _, k, v, _) in read_all(&s.current) {
        current.insert(String::from_utf8(k.unwrap()).unwrap(), v.is_some());
    }
    for c in gone {
        assert_eq!(
            current.get(c),
            Some(&false),
            "{c}: tombstone in the current topic"
        );
        let last = read_all(&s.output)
            .into_iter()
            .rev()
            .find(|(_, _, k, _, _)| k.as_deref() == Some(c.as_bytes()))
            .map(|(_, _, _, v, _)| SegmentChange::decode(&v.unwrap()[..]).unwrap())
            .unwrap();
        assert_eq!(
            (last.membership, last.trigger, last.segment.as_str()),
            (Membership::Exited as i32, Trigger::Erased as i32, "")
        );
    }
    let audits = read_all(&audit);
    assert_eq!(audits.len(), 2, "one audit entry per request");
    for (_, _, k, v, _) in audits {
        let mut bytes = k.unwrap();
        bytes.extend(v.unwrap());
        for c in gone {
            assert!(
                !contains(&bytes, c.as_bytes()),
                "the audit holds no clear id"
            );
        }
    }

    // A restart restores the state: nothing of them comes back.
    let mut again = start_as_with(&s.config, &log, "a", &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "not ready:\n{}", tail(&log));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    expect(&gone[1], 404);
    expect(&kept[0], 200);
    sigterm(&again);
    assert!(
        again.wait().unwrap().success(),
        "clean stop:\n{}",
        tail(&log)
    );

    // Batch scoring from the topics skips erased customers.
    let csv = s.dir.path().join("predict.csv");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_segstream"))
        .args(["predict", "-c"])
        .arg(&s.config)
        .arg("--model")
        .arg(s.dir.path().join("models/m1"))
        .args(["--from", "topics", "--out"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    for c in gone {
        assert!(!text.contains(c.as_str()), "{c} was scored");
    }
    assert!(text.contains(kept[0].as_str()));
}
