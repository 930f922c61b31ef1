//! What a recommender consumes (issue 15): replay marking of backfilled
//! versus live changes, and the current-membership topic. (The exact
//! current topic after SIGKILLs and rebalances is checked by the verifier
//! of the exactly-once tests, `verify_current`.)

mod common;

use std::collections::BTreeMap;

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
