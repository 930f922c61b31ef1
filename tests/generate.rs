//! `segstream generate` as an operator uses it: to a history file, and to
//! the input topics of a real broker (read back with `event::files`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use segstream::config::Config;
use segstream::event::files::{EventReader, Record};
use segstream::event::{Event, Limits};
use segstream::generate::{history, GeneratorConfig};
use segstream::intake::history::read_topics;

fn segstream() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segstream"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SEGSTREAM__") || k == "SEGSTREAM_CONFIG" {
            c.env_remove(k);
        }
    }
    c
}

fn read_file(path: &std::path::Path) -> Vec<Event> {
    EventReader::open(path, None, &Limits::default(), None)
        .unwrap()
        .map(|r| match r.unwrap() {
            Record::Event(e) => e,
            Record::Bad(b) => panic!("bad row {b:?}"),
        })
        .collect()
}

#[test]
fn generate_to_files_writes_the_seeded_history_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let expected: Vec<Event> = history(&GeneratorConfig {
        seed: 5,
        customers: 40,
        days: 14,
        start_ms: 1_735_689_600_000,
        ..GeneratorConfig::default()
    })
    .collect();
    assert!(expected.len() > 100);
    for ext in ["ndjson", "parquet"] {
        let out = dir.path().join(format!("h.{ext}"));
        let run = segstream()
            .args([
                "generate",
                "--to",
                "file",
                "--customers",
                "40",
                "--days",
                "14",
            ])
            .args(["--seed", "5", "--start", "2025-01-01T00:00:00Z", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            stdout.contains(&format!("wrote {} events", expected.len())),
            "{stdout}"
        );
        assert!(stdout.contains("archetype mix:"), "{stdout}");
        assert!(stdout.contains(&format!("({ext},")), "{stdout}");
        assert_eq!(read_file(&out), expected, "{ext}");
    }
    // Arguments that do not fit together are refused.
    let run = segstream()
        .args(["generate", "--to", "file"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--out"));
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_to_kafka_produces_every_event_to_its_kind_topic() {
    let prefix = common::unique("it-gen");
    let topics: Vec<String> = ["browse", "purchase", "review"]
        .iter()
        .map(|k| format!("{prefix}-events.{k}"))
        .collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    // History records carry old event times as timestamps: keep them.
    common::create_topics_with(&names, 3, &[("retention.ms", "-1")]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("segstream.toml");
    let mut settings = Config::default();
    settings.kafka.bootstrap_servers = common::bootstrap();
    settings.kafka.group_id = common::unique("it-gen-group");
    settings.input.topics = topics.clone();
    common::write_config(&file, &settings);
    let run = segstream()
        .args(["--config"])
        .arg(&file)
        .args([
            "generate",
            "--to",
            "kafka",
            "--format",
            "json",
            "--customers",
            "60",
        ])
        .args(["--days", "20", "--seed", "9", "--start", "1767225600000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let expected: Vec<Event> = history(&GeneratorConfig {
        seed: 9,
        customers: 60,
        days: 20,
        start_ms: 1_767_225_600_000,
        ..GeneratorConfig::default()
    })
    .collect();
    let config = Config::load(Some(&file)).unwrap();
    let (read, report) = tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        let report = read_topics(
            &config,
            1000,
            |r| match r {
                Record::Event(e) => events.push(e),
                Record::Bad(b) => panic!("bad record {b:?}"),
            },
            |_| {},
        )
        .unwrap();
        (events, report)
    })
    .await
    .unwrap();
    assert_eq!(report.events, expected.len() as u64);
    assert_eq!(report.rejected_total(), 0);
    let mut by_id: BTreeMap<String, Event> =
        read.into_iter().map(|e| (e.event_id.clone(), e)).collect();
    for e in &expected {
        assert_eq!(by_id.remove(&e.event_id).as_ref(), Some(e));
    }
    assert!(by_id.is_empty());
    for (kind, topic) in ["browse", "purchase", "review"].iter().zip(&topics) {
        let n = expected
            .iter()
            .filter(|e| e.kind().as_str() == *kind)
            .count();
        assert!(
            stdout.contains(&format!("produced {n:>10} events to {topic}")),
            "{kind}: {stdout}"
        );
    }
}
