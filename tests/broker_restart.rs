//! The broker stops and starts again mid-stream; the pipeline recovers by
//! itself and the verifier finds every event exactly once. (Its own test
//! binary: cargo runs test binaries one after another, so restarting the
//! shared local broker cannot disturb the other tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::pipeline::*;

fn broker(action: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka.sh");
    let status = Command::new(script)
        .arg(action)
        .status()
        .expect("run kafka.sh");
    assert!(status.success(), "kafka.sh {action} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_recovers_from_a_broker_restart() {
    common::require_onnxruntime();
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let s = setup().await;
    phase("setup");
    // The whole stream is in the topics before the pipeline starts; the
    // broker goes away while the pipeline is working through it, for longer
    // than the transaction timeout (so the open transaction is timed out and
    // the producer fenced, which the pipeline must survive).
    let stream = produce_stream(topics(&s), 1.0).await;
    phase("stream produced");
    let log = s.dir.path().join("run.log");
    let mut children = vec![start(&s.config, &log)];
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    broker("down");
    phase("broker down");
    tokio::time::sleep(Duration::from_secs(12)).await;
    broker("up");
    phase("broker up");
    keep_log(&log);
    wait_consumed(&s, &mut children, &log).await;
    phase("consumed");
    // The end of the outage is announced once the clients reconnect
    // (librdkafka's reconnect back-off grows to 10 s while the broker is away).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("Kafka brokers are reachable again.")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let child = &mut children[0];
    sigterm(child);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "segstream run exit: {status}:\n{}",
        tail(&log)
    );
    keep_log(&log);
    verify(&s, &stream);
    phase("verified");
    // Quiet outage: one WARN when it starts, one INFO when it ends, and no
    // connection failure logged as an ERROR.
    let text = std::fs::read_to_string(&log).unwrap();
    let noisy: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" ERROR ") && l.contains("Connection refused"))
        .collect();
    assert!(
        noisy.is_empty(),
        "{} connection failures logged as errors, e.g. {:?}",
        noisy.len(),
        noisy.first()
    );
    assert!(
        text.contains("Kafka brokers are unreachable"),
        "the outage is announced:\n{}",
        tail(&log)
    );
    assert!(
        text.contains("Kafka brokers are reachable again."),
        "the end of the outage is announced:\n{}",
        tail(&log)
    );
}
