//! Privacy (issue 17): pseudonymous ids reach no topic, metric or log in
//! clear; `segstream forget` erases a customer for good (a restore after a
//! crash brings nothing back; `predict` on the topics skips them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::pipeline::*;
use prost::Message as _;
use segstream::event::corpus::browse;
use segstream::event::encode::{encode, WireFormat};
use segstream::event::proto::{Membership, RiskFlag, SegmentChange, Trigger};
use segstream::ingest::now_ms;
use segstream::privacy::Pseudonymizer;
use segstream::state::changelog;

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

/// The events of `customer` on the browse topic: `n` views from `from_ms`,
/// `every_ms` apart (ids start at `first`).
fn views(
    s: &Setup,
    customer: &str,
    first: usize,
    n: usize,
    from_ms: i64,
    every_ms: i64,
) -> Vec<(String, String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let id = format!("{customer}-v{}", first + i);
            let at = from_ms + i as i64 * every_ms;
            let value = encode(&browse(customer, &id, at), WireFormat::Protobuf);
            (s.browse.clone(), customer.to_string(), value)
        })
        .collect()
}

/// The values of every committed record of `topic` keyed by `customer`.
fn records_of(topic: &str, customer: &str) -> Vec<Option<Vec<u8>>> {
    read_all(topic)
        .into_iter()
        .filter(|(_, _, k, _, _)| k.as_deref() == Some(customer.as_bytes()))
        .map(|(_, _, _, v, _)| v)
        .collect()
}

/// The latest changelog value per key.
fn changelog_latest(s: &Setup) -> HashMap<String, Option<Vec<u8>>> {
    let mut latest = HashMap::new();
    for (_, _, k, v, _) in read_all(&s.changelog) {
        latest.insert(String::from_utf8(k.unwrap()).unwrap(), v);
    }
    latest
}

fn forget(s: &Setup, customers: &[&str]) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_segstream"));
    cmd.args(["forget", "-c"]).arg(&s.config);
    for c in customers {
        cmd.args(["--customer", c]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 36: an erasure holds as of the request's time, also when the
/// input lags behind the request. A stopped instance lags; the customers'
/// events produced before the request are read after it (many cycles
/// later: they come after a backlog of other customers' events), and none
/// of them brings state, a segment, a current record, a lookup answer or a
/// flag back; an event stamped after the request starts a new state. Then
/// a SIGKILL, and events stamped before the request that arrive after the
/// restore (a late backfill) are dropped too: the marker came back from the
/// changelog. Around it, flags raised before an erasure or an eviction
/// are cleared on the risk topic (reason ERASED, EVICTED), and the topic
/// alternates raise/clear per customer and rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_holds_while_the_input_lags_and_through_a_crash() {
    common::require_onnxruntime();
    let mut s = setup().await;
    let erasure = format!("{}.erasure", s.group);
    common::create_topics(&[&erasure], PARTITIONS).await;
    s.configure(|c| {
        c.privacy.erasure_topic = erasure.clone();
        // Small cycles: the lagging customers' events come many cycles
        // after the erasure request is read.
        c.pipeline.max_cycle_records = 50;
        c.state.ttl = Duration::from_secs(91 * 86_400);
    });
    let log = s.dir.path().join("run.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("SEGSTREAM__PIPELINE__HTTP_LISTEN", listen.as_str())];
    let now = now_ms();

    // Flags that clear when their customer leaves: a bot erased while
    // running, and a bot of long ago evicted by the TTL once newer events
    // move the watermark on.
    let (bot, old_bot) = ("risk-bot-erased", "risk-bot-evicted");
    let mut first = views(&s, old_bot, 0, 40, now - 100 * 86_400_000, 1_500);
    first.extend(views(&s, bot, 0, 40, now - 600_000, 1_500));
    produce_records(first).await;
    let mut child = start_as_with(&s.config, &log, "a", &env);
    wait_consumed(&s, std::slice::from_mut(&mut child), &log).await;
    forget(&s, &[bot]);
    // Newer events in every partition: the old bot's partition evicts it.
    let fillers: Vec<String> = (0..30).map(|i| format!("filler-{i:02}")).collect();
    let mut now_events = Vec::new();
    for f in &fillers {
        now_events.extend(views(&s, f, 0, 2, now - 60_000, 1_000));
    }
    produce_records(now_events).await;
    wait_consumed(&s, std::slice::from_mut(&mut child), &log).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let latest = changelog_latest(&s);
        let gone = |c: &str| latest.get(c).is_some_and(Option::is_none);
        if gone(bot) && gone(old_bot) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not erased and evicted:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for (customer, reason) in [(bot, "ERASED"), (old_bot, "EVICTED")] {
        let flags: Vec<RiskFlag> = records_of(&s.risk, customer)
            .into_iter()
            .map(|v| RiskFlag::decode(&v.unwrap()[..]).unwrap())
            .collect();
        let summary: Vec<(bool, &str)> = flags
            .iter()
            .map(|f| (f.raised, f.reason.as_str()))
            .collect();
        assert_eq!(
            summary,
            [(true, "RULE"), (false, reason)],
            "{customer}: {flags:?}\n{}",
            tail(&log)
        );
        assert_eq!(flags[1].rule, "bot_browsing");
    }

    // The lag: the instance is stopped while the customers act, then the
    // requests come.
    let (gone, back, kept) = ("lag-gone", "lag-back", "lag-kept");
    let mut backlog = Vec::new();
    for f in &fillers {
        backlog.extend(views(&s, f, 10, 60, now - 300_000, 1_000));
    }
    for c in [gone, back, kept] {
        // 40 views in a minute: a bot_browsing flag if they were applied.
        backlog.extend(views(&s, c, 0, 40, now - 240_000, 1_500));
    }
    produce_records(backlog).await;
    forget(&s, &[gone, back]);
    let requested = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Stamped after the request: a new state for `back`.
    let after = now_ms() + 1_000;
    produce_records(views(&s, back, 100, 1, after, 0)).await;

    let mut child = start_as_with(&s.config, &log, "a", &env);
    wait_consumed(&s, std::slice::from_mut(&mut child), &log).await;
    let marker = |c: &str| format!("\u{0}erased:{c}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ![gone, back].iter().all(|c| {
        changelog_latest(&s)
            .get(&marker(c))
            .is_some_and(Option::is_some)
    }) {
        assert!(
            Instant::now() < deadline,
            "no erasure markers:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lookup = |c: &str| {
        get_settled(port, &format!("/v1/customers/{c}")).expect("the HTTP endpoint answers")
    };
    let check = |phase: &str| {
        let (status, _, body) = lookup(gone);
        assert_eq!(
            status,
            404,
            "{phase}: lookup of {gone}: {body}\n{}",
            tail(&log)
        );
        assert_eq!(lookup(kept).0, 200, "{phase}: {kept}");
        let (status, _, body) = lookup(back);
        assert_eq!(status, 200, "{phase}: lookup of {back}: {body}");
        let latest = changelog_latest(&s);
        assert!(
            latest.get(gone).is_none_or(Option::is_none),
            "{phase}: {gone} has state in the changelog"
        );
        let state = changelog::decode(latest[back].as_ref().unwrap()).unwrap();
        assert_eq!(
            state.recent().len(),
            1,
            "{phase}: {back} holds only the event after the request"
        );
        assert_eq!(i64::from(state.recent()[0].time_s), after / 1000);
        let kept_state = changelog::decode(latest[kept].as_ref().unwrap()).unwrap();
        assert_eq!(
            kept_state.recent().len(),
            40,
            "{phase}: {kept} is untouched"
        );
        for topic in [&s.output, &s.current, &s.risk] {
            assert_eq!(
                records_of(topic, gone).len(),
                0,
                "{phase}: {gone} appears in {topic}"
            );
        }
        for v in records_of(&s.output, back) {
            let c = SegmentChange::decode(&v.unwrap()[..]).unwrap();
            assert!(
                c.as_of_ms > requested,
                "{phase}: a change of {back} before the request: {c:?}"
            );
        }
        assert!(
            records_of(&s.risk, back).is_empty(),
            "{phase}: {back} flagged"
        );
        let flagged: Vec<_> = records_of(&s.risk, kept)
            .into_iter()
            .map(|v| RiskFlag::decode(&v.unwrap()[..]).unwrap().raised)
            .collect();
        assert_eq!(flagged, [true], "{phase}: the same events flag {kept}");
    };
    check("caught up");
    let metrics = get(port, "/metrics").unwrap().1;
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("segstream_erased_events_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(dropped >= 80.0, "80 events dropped, counted {dropped}");

    // SIGKILL; a late backfill stamped before the request arrives; the
    // restore brings the markers back and they drop it.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut late = Vec::new();
    for c in [gone, back] {
        late.extend(views(&s, c, 200, 5, requested - 120_000, 1_000));
    }
    produce_records_at(late, Some(requested - 1_000)).await;
    let mut child = start_as_with(&s.config, &log, "a", &env);
    wait_consumed(&s, std::slice::from_mut(&mut child), &log).await;
    check("after a SIGKILL and a restore");
    sigterm(&child);
    assert!(
        child.wait().unwrap().success(),
        "clean stop:\n{}",
        tail(&log)
    );
    verify_risk(&s, &changelog_latest(&s));
}
