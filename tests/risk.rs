//! Risk flags through the pipeline (issue 17): the abuse patterns of
//! `generate::abuse` streamed into a running pipeline that is SIGKILLed
//! midway; every pattern's rule is raised on the risk topic, and per
//! customer and rule the flags alternate raised/cleared exactly once and
//! agree with the committed state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::pipeline::*;
use prost::Message as _;
use segstream::event::encode::{encode, to_proto, WireFormat};
use segstream::event::proto::RiskFlag;
use segstream::generate::abuse::{abuse, AbuseConfig};
use segstream::ingest::now_ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_patterns_raise_their_flags_exactly_once_through_a_crash() {
    common::require_onnxruntime();
    let s = setup().await;
    let overlay = abuse(&AbuseConfig {
        seed: 5,
        start_ms: now_ms() - 10 * 86_400_000,
        days: 2,
        bots: 3,
        rings: 1,
        ring_size: 3,
        rushes: 2,
        bursts: 2,
        ordinary_visits: true,
    });
    let records: Vec<(String, String, Vec<u8>)> = overlay
        .events
        .iter()
        .map(|e| {
            (
                s.browse.clone(),
                e.customer_id.clone(),
                encode(&to_proto(e), WireFormat::Protobuf),
            )
        })
        .collect();
    let (first, second) = records.split_at(records.len() / 2);
    produce_records(first.to_vec()).await;
    let log = s.dir.path().join("run.log");
    let mut child = start(&s.config, &log);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    produce_records(second.to_vec()).await;
    let mut children = vec![start(&s.config, &log)];
    wait_consumed(&s, &mut children, &log).await;
    // Started for sure (its signal handler too) before the SIGTERM.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !tail(&log).contains("Running.") {
        assert!(std::time::Instant::now() < deadline, "{}", tail(&log));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sigterm(&children[0]);
    let status = children[0].wait().unwrap();
    assert!(status.success(), "clean stop: {status}\n{}", tail(&log));

    let mut latest = std::collections::HashMap::new();
    for (_, _, key, value, _) in read_all(&s.changelog) {
        latest.insert(String::from_utf8(key.unwrap()).unwrap(), value);
    }
    verify_risk(&s, &latest);
    let mut raised: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, _, _, value, headers) in read_all(&s.risk) {
        let f = RiskFlag::decode(&value.unwrap()[..]).unwrap();
        assert!(headers
            .iter()
            .any(|(k, v)| k == "segstream.risk.rule" && *v == f.rule));
        assert_eq!(f.rules_version, "risk-rules-1");
        // A rule's decision shows its figures; a customer who leaves
        // (erased, evicted) clears without any.
        assert_eq!(f.reason == "RULE", !f.evidence.is_empty(), "{f:?}");
        if f.raised {
            assert!(f.score >= 1.0 && f.severity != "LOW", "{f:?}");
            raised.entry(f.customer_id).or_default().insert(f.rule);
        }
    }
    for (actor, rules) in &overlay.truth {
        for rule in rules {
            assert!(
                raised.get(actor).is_some_and(|r| r.contains(rule.as_str())),
                "{actor}: {} not raised; raised: {:?}",
                rule.as_str(),
                raised.get(actor)
            );
        }
    }
}
