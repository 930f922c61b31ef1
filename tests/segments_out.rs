//! What a recommender consumes (issue 15): replay marking of backfilled
//! versus live changes, and the current-membership topic. (The exact
//! current topic after SIGKILLs and rebalances is checked by the verifier
//! of the exactly-once tests, `verify_current`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::pipeline::*;
use prost::Message as _;
use segstream::event::corpus::{browse, purchase};
use segstream::event::encode::{encode, WireFormat};
use segstream::event::proto::{Membership, SegmentChange};
use segstream::ingest::now_ms;

const DAY: i64 = 86_400_000;

/// A backfill of history weeks old is marked replay (`live` false, header
/// `segstream.live: false`); events happening now are marked live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfilled_changes_are_replay_and_live_changes_are_live() {
    common::require_onnxruntime();
    let s = setup().await;
    let now = now_ms();
    let mut history = Vec::new();
    for c in 0..60 {
        let customer = format!("old-{c:03}");
        for i in 0..6i64 {
            // 40 to 9 days ago.
            let at = now - 40 * DAY + (c * 5 + i * 3) * DAY / 10;
            let e = if i % 2 == 0 {
                browse(&customer, &format!("{customer}-{i}"), at)
            } else {
                purchase(&customer, &format!("{customer}-{i}"), at)
            };
            history.push((at, customer.clone(), encode(&e, WireFormat::Protobuf)));
        }
    }
    history.sort_by_key(|h| h.0);
    let records = history
        .into_iter()
        .map(|(_, k, v)| (s.browse.clone(), k, v))
        .collect();
    produce_records(records).await;
    let log = s.dir.path().join("run.log");
    let mut child = start(&s.config, &log);
    wait_consumed(&s, std::slice::from_mut(&mut child), &log).await;

    // Now live traffic.
    let now = now_ms();
    let live: Vec<(String, String, Vec<u8>)> = (0..20)
        .map(|c| {
            let customer = format!("new-{c:03}");
            let e = purchase(&customer, &format!("{customer}-0"), now);
            (
                s.purchase.clone(),
                customer,
                encode(&e, WireFormat::Protobuf),
            )
        })
        .collect();
    produce_records(live).await;
    wait_consumed(&s, std::slice::from_mut(&mut child), &log).await;
    sigterm(&child);
    assert!(
        child.wait().unwrap().success(),
        "clean stop:\n{}",
        tail(&log)
    );

    let mut first: BTreeMap<String, (SegmentChange, String)> = BTreeMap::new();
    for (_, _, key, value, headers) in read_all(&s.output) {
        let c = SegmentChange::decode(&value.unwrap()[..]).unwrap();
        let header = headers
            .iter()
            .find(|(k, _)| k == "segstream.live")
            .map(|(_, v)| v.clone())
            .expect("segstream.live header");
        assert_eq!(header, c.live.to_string(), "header agrees with the value");
        assert_eq!(c.membership, Membership::Entered as i32);
        first
            .entry(String::from_utf8(key.unwrap()).unwrap())
            .or_insert((c, header));
    }
    let (old, new): (Vec<_>, Vec<_>) = first.iter().partition(|(k, _)| k.starts_with("old-"));
    assert_eq!(old.len(), 60, "every backfilled customer classified");
    assert_eq!(new.len(), 20, "every live customer classified");
    for (customer, (c, _)) in old {
        assert!(
            !c.live,
            "{customer}: a backfilled first classification is replay: {c:?}"
        );
    }
    for (customer, (c, _)) in new {
        assert!(
            c.live,
            "{customer}: a live event's classification is live: {c:?}"
        );
    }
}

/// `GET /v1/customers/{id}` with two instances (two stream threads each):
/// the owner answers from its state (segment as in the committed
/// changelog, the customer's partition as the producers' partitioner put
/// it); the other redirects to the owner's advertised URL; an unknown
/// customer is 404 at the owner; a bad id is 400; and while a partition
/// restores its state the owner answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_answer_owned_redirect_not_owned_and_wait_for_restores() {
    common::require_onnxruntime();
    let s = setup().await;
    let stream = produce_stream(topics(&s), 0.5).await;
    let log = s.dir.path().join("run.log");
    let (pa, pb) = (free_port(), free_port());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let env = |port: u16, fault: &'static str| {
        vec![
            (
                "SEGSTREAM__PIPELINE__HTTP_LISTEN".to_string(),
                format!("127.0.0.1:{port}"),
            ),
            ("SEGSTREAM__PIPELINE__ADVERTISED_URL".to_string(), url(port)),
            ("SEGSTREAM_FAULT_HANG".to_string(), fault.to_string()),
        ]
    };
    let start = |name: &str, vars: &[(String, String)]| {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        start_as_with(&s.config, &log, name, &vars)
    };
    let mut a = start("a", &env(pa, ""));
    wait_consumed(&s, std::slice::from_mut(&mut a), &log).await;
    let customers: Vec<String> = stream.produced.keys().cloned().collect();

    // b joins; its first restore takes 8 s longer: meanwhile it answers 503
    // for customers of that partition.
    let b = start("b", &env(pb, "restore@1+8s"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut saw_restoring = false;
    while !saw_restoring && std::time::Instant::now() < deadline {
        for c in &customers {
            if let Some((503, body)) = get(pb, &format!("/v1/customers/{c}")) {
                if body.contains("restoring") {
                    saw_restoring = true;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        saw_restoring,
        "b answered 503 restoring during its restore:\n{}",
        tail(&log)
    );
    let mut both = vec![a, b];
    wait_consumed(&s, &mut both, &log).await;
    // Peers are re-read every few seconds.
    tokio::time::sleep(Duration::from_secs(7)).await;

    let mut latest: BTreeMap<String, (i32, Option<Vec<u8>>)> = BTreeMap::new();
    for (p, _, key, value, _) in read_all(&s.changelog) {
        latest.insert(String::from_utf8(key.unwrap()).unwrap(), (p, value));
    }
    let check = |c: &str, body: &str| {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let (p, bytes) = &latest[c];
        let state = segstream::state::changelog::decode(bytes.as_ref().unwrap()).unwrap();
        assert_eq!(v["customer_id"], c);
        assert_eq!(v["partition"], *p, "{c}: the producers' partition");
        assert_eq!(v["segment"], state.decision.segment.as_str(), "{c}: {v}");
        assert_eq!(v["model_version"], "m1");
        assert!(
            v["scores"].as_object().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(
            v["offsets"].as_object().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    };
    let (mut owned, mut redirected) = (0, 0);
    for c in &customers {
        let (status, head, body) = get_settled(pa, &format!("/v1/customers/{c}")).unwrap();
        match status {
            200 => {
                check(c, &body);
                owned += 1;
            }
            307 => {
                let location = format!("location: {}/v1/customers/{c}", url(pb));
                assert!(head.to_ascii_lowercase().contains(&location), "{head}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["partition"], latest[c].0);
                let (status, _, body) = get_settled(pb, &format!("/v1/customers/{c}")).unwrap();
                assert_eq!(status, 200, "{c} at its owner: {body}");
                check(c, &body);
                redirected += 1;
            }
            other => panic!("{c}: {other} {body}\n{}", tail(&log)),
        }
    }
    assert!(
        owned > 0 && redirected > 0,
        "owned {owned}, redirected {redirected}"
    );
    // An unknown customer: 404 at whichever instance owns its partition.
    let unknown = "nobody-at-all";
    let at_a = get_settled(pa, &format!("/v1/customers/{unknown}"))
        .map(|(s, _, b)| (s, b))
        .unwrap();
    let at_b = get_settled(pb, &format!("/v1/customers/{unknown}"))
        .map(|(s, _, b)| (s, b))
        .unwrap();
    assert!(
        [at_a.0, at_b.0].contains(&404) && [at_a.0, at_b.0].contains(&307),
        "{at_a:?} {at_b:?}"
    );
    assert_eq!(get(pa, "/v1/customers/a%00b").unwrap().0, 400);
    let metrics = get(pa, "/metrics").unwrap().1;
    assert!(
        metrics.contains("segstream_lookups_total{outcome=\"found\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("cust-"), "no customer id in metrics");

    for child in &mut both {
        sigterm(child);
        assert!(
            child.wait().unwrap().success(),
            "clean stop:\n{}",
            tail(&log)
        );
    }
    assert!(!std::fs::read_to_string(&log)
        .unwrap()
        .contains("nobody-at-all"));
    verify(&s, &stream);
}

/// Runs the consumer example (`deploy/examples/segment_members.py`, Python
/// confluent-kafka) and returns the member set it printed.
fn members_by_example(
    python: &std::path::Path,
    topic: &str,
    from: &str,
    segment: &str,
) -> Vec<String> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/segment_members.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["--bootstrap", &common::bootstrap(), "--topic", topic])
        .args(["--from", from, "--segment", segment])
        .output()
        .expect("run the consumer example");
    assert!(
        out.status.success(),
        "segment_members.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// With one topic per segment, customers move between segments while a
/// SIGKILL interrupts the pipeline; afterwards the consumer example, reading
/// only one segment's topic, gets exactly that segment's members (ENTERED
/// adds, EXITED removes), and so does a bootstrap from the current topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_segment_topic_alone_gives_the_exact_member_set() {
    common::require_onnxruntime();
    let Some(python) = common::tool(
        "SEGSTREAM_TEST_CLIENT_PYTHON",
        "confluent-kafka (make client-pyenv)",
    ) else {
        return;
    };
    let mut s = setup().await;
    let template = format!("{}.{{segment}}", s.output);
    let segments = segstream::model::Segment::names();
    let topics_of: Vec<String> = segments
        .iter()
        .map(|seg| template.replace("{segment}", seg))
        .collect();
    let names: Vec<&str> = topics_of.iter().map(String::as_str).collect();
    common::create_topics(&names, 1).await;
    s.configure(|c| c.output.topic = template.clone());

    let producing = tokio::spawn(produce_stream(topics(&s), 8.0));
    let log = s.dir.path().join("run.log");
    let mut child = start(&s.config, &log);
    tokio::time::sleep(Duration::from_secs(4)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let _stream = producing.await.unwrap();
    let mut children = vec![start(&s.config, &log)];
    wait_consumed(&s, &mut children, &log).await;
    sigterm(&children[0]);
    assert!(
        children[0].wait().unwrap().success(),
        "clean stop:\n{}",
        tail(&log)
    );

    // The truth: each customer's committed decision.
    let mut truth: BTreeMap<String, String> = BTreeMap::new();
    for (_, _, key, value, _) in read_all(&s.changelog) {
        let state = segstream::state::changelog::decode(&value.unwrap()).unwrap();
        truth.insert(
            String::from_utf8(key.unwrap()).unwrap(),
            state.decision.segment,
        );
    }
    // Some customers did move, so exits were exercised.
    let exits = topics_of
        .iter()
        .flat_map(|t| read_all(t))
        .filter(|(_, _, _, _, h)| {
            h.iter()
                .any(|(k, v)| k == "segstream.membership" && v == "EXITED")
        })
        .count();
    // Moves depend on how scores fall as events arrive; usually some
    // customers move (the exits are then checked below too). The exit
    // logic itself is covered for any sequence of moves by the unit
    // property test `one_segment_topic_gives_the_exact_member_set`.
    if exits == 0 {
        eprintln!("note: no customer moved in this run; only entries were checked");
    }
    for (seg, topic) in segments.iter().zip(&topics_of) {
        let want: Vec<String> = truth
            .iter()
            .filter(|(_, s)| *s == seg)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(
            members_by_example(&python, topic, "changes", seg),
            want,
            "segment {seg} from its topic"
        );
        assert_eq!(
            members_by_example(&python, &s.current, "current", seg),
            want,
            "segment {seg} from the current topic"
        );
    }
}
