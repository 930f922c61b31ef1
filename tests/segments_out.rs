//! What a recommender consumes (issue 15): replay marking of backfilled
//! versus live changes, and the current-membership topic. (The exact
//! current topic after SIGKILLs and rebalances is checked by the verifier
//! of the exactly-once tests, `verify_current`.)

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
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set; run `make test` (it provisions ONNX Runtime)"
    );
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
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set; run `make test` (it provisions ONNX Runtime)"
    );
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
        let (status, head, body) = get_full(pa, &format!("/v1/customers/{c}")).unwrap();
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
                let (status, body) = get(pb, &format!("/v1/customers/{c}")).unwrap();
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
    let at_a = get(pa, &format!("/v1/customers/{unknown}")).unwrap();
    let at_b = get(pb, &format!("/v1/customers/{unknown}")).unwrap();
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
