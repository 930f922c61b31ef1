//! `segstream bench`: the suite report has every section, and the ingest and
//! training benchmarks run at tiny sizes and account for every event. No
//! timing is asserted (these machines are shared and noisy).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use segstream::bench::{
    suite_markdown, E2eBench, Floor, HistoryE2e, IngestBench, Latency, Machine, Outcome,
    OutcomesCost, RestoreBench, ScoreBenchRow, SparseBench, StateBench, Suite, TrainBench,
};
use segstream::train::metrics::MarginLine;

fn segstream() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segstream"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SEGSTREAM__") || k == "SEGSTREAM_CONFIG" {
            c.env_remove(k);
        }
    }
    c
}

fn suite() -> Suite {
    Suite {
        machine: Machine::describe(),
        conditions: "A test run.".into(),
        command: "segstream bench all".into(),
        ingest: Outcome::Done(IngestBench {
            events: 3000,
            partitions: 3,
            bytes_per_event: 81.0,
            rounds: 2,
            raw_events_per_second: 200_000.0,
            pipeline_events_per_second: 150_000.0,
            ratio: 0.75,
            threads: 2,
            threaded_events_per_second: 270_000.0,
            threaded_ratio: 1.35,
            scaling: 1.8,
            raw_megabytes_per_second: 16.2,
            applied: 2990,
            duplicates: 4,
            late: 0,
            refused: 6,
            customers: 120,
        }),
        state: vec![
            Outcome::Done(StateBench {
                customers: 1000,
                mean_events: 20.0,
                memory_bytes_per_customer: 936.0,
                changelog_bytes_per_customer: 666.0,
                full_customer_memory_bytes: 2478,
                full_customer_changelog_bytes: 2170,
                restore: Some(RestoreBench {
                    records: 1000,
                    raw_records_per_second: 79_200.0,
                    restore_customers_per_second: 79_500.0,
                    ratio: 1.004,
                    setup_seconds: 0.009,
                }),
            }),
            Outcome::Failed("out of memory\nat 1M".into()),
        ],
        score: Outcome::Done(vec![ScoreBenchRow {
            batch: 64,
            raw_customers_per_second: 38_900.0,
            scorer_customers_per_second: 37_600.0,
            overhead: 0.033,
            without_reasons_customers_per_second: Some(38_000.0),
            reasons_overhead: Some(0.011),
        }]),
        e2e: Outcome::Done(E2eBench {
            model: "rules".into(),
            events: 10_000,
            raw_events_per_second: 180_000.0,
            pipeline_events_per_second: 9_000.0,
            ratio: 0.05,
            floor: Floor {
                records_per_event: [1.0, 1.0, 1.0],
                bytes_per_event: 1_050.0,
                events_per_second: 45_000.0,
                ratio: 0.2,
                pipeline_cpu_us: Some(60.0),
                floor_cpu_us: Some(20.0),
                cpu_ratio: Some(3.0),
            },
            latency: Latency {
                target_rate: 4_500.0,
                rate: 4_500.0,
                samples: 45_000,
                p50_ms: 120.0,
                p99_ms: 480.0,
                machine_busy_pct: Some(61.0),
            },
            latency_quarter: Latency {
                target_rate: 2_250.0,
                rate: 2_250.0,
                samples: 45_000,
                p50_ms: 90.0,
                p99_ms: 210.0,
                machine_busy_pct: Some(40.0),
            },
            history: Outcome::Done(HistoryE2e {
                events: 10_000,
                customers: 580,
                raw_events_per_second: 170_000.0,
                pipeline_events_per_second: 40_000.0,
                ratio: 0.235,
                segment_changes: 950,
                dead_letters: 3,
                late_events: 0,
                floor: Floor {
                    records_per_event: [0.4, 0.02, 0.02],
                    bytes_per_event: 420.0,
                    events_per_second: 90_000.0,
                    ratio: 0.444,
                    pipeline_cpu_us: None,
                    floor_cpu_us: Some(9.5),
                    cpu_ratio: None,
                },
                outcomes: Some(OutcomesCost {
                    every_days: 7,
                    horizon_days: 7,
                    shadow: "rules-bench-shadow".into(),
                    events_per_second: 38_000.0,
                    throughput_ratio: 0.95,
                    cpu_us_per_event: Some(12.0),
                    cpu_ratio: Some(1.2),
                    outcomes: 1_234,
                    changelog_record_bytes: (760.0, 800.0),
                    changelog_records_per_event: (0.14, 0.18),
                }),
            }),
        }),
        e2e_transformer: Outcome::Done(E2eBench {
            model: "transformer".into(),
            events: 10_000,
            raw_events_per_second: 180_000.0,
            pipeline_events_per_second: 5_000.0,
            ratio: 0.028,
            floor: Floor {
                records_per_event: [1.0, 1.0, 1.0],
                bytes_per_event: 1_050.0,
                events_per_second: 45_000.0,
                ratio: 0.111,
                pipeline_cpu_us: Some(90.0),
                floor_cpu_us: Some(20.0),
                cpu_ratio: Some(4.5),
            },
            latency: Latency {
                target_rate: 2_500.0,
                rate: 2_500.0,
                samples: 45_000,
                p50_ms: 900.0,
                p99_ms: 1_500.0,
                machine_busy_pct: None,
            },
            latency_quarter: Latency {
                target_rate: 1_250.0,
                rate: 1_250.0,
                samples: 45_000,
                p50_ms: 300.0,
                p99_ms: 700.0,
                machine_busy_pct: None,
            },
            history: Outcome::Failed("the group did not settle\n| in time".into()),
        }),
        train: Outcome::Done(TrainBench {
            history: "generated".into(),
            events: 1_000_000,
            customers: 7273,
            days: 180,
            examples: (90_000, 30_000),
            parameters: 283_456,
            epochs: 1,
            plain_replay_seconds: 2.0,
            replay_seconds: 13.0,
            replay_ratio: 6.5,
            seconds_per_epoch: 40.0,
            fit_seconds: 40.0,
            eval_export_seconds: 5.0,
            seconds_per_million_replay_epoch: 53.0,
            seconds_per_million_total: 58.0,
            total_seconds: 58.0,
            candidate_examples: 150_000,
            purchase_auc: vec![
                ("Transformer".into(), 0.861),
                ("logistic regression".into(), 0.846),
            ],
            seed: 11,
            served: "transformer".into(),
            served_quality: Vec::new(),
            margins: Vec::new(),
        }),
        train_sparse: Outcome::Done(SparseBench {
            runs: vec![TrainBench {
                history: "generated, purchases only".into(),
                events: 422_075,
                customers: 25_000,
                days: 456,
                examples: (49_848, 39_843),
                parameters: 1_194_880,
                epochs: 3,
                plain_replay_seconds: 0.3,
                replay_seconds: 1.6,
                replay_ratio: 5.3,
                seconds_per_epoch: 24.0,
                fit_seconds: 79.1,
                eval_export_seconds: 33.1,
                seconds_per_million_replay_epoch: 60.6,
                seconds_per_million_total: 270.0,
                total_seconds: 113.8,
                candidate_examples: 730_276,
                purchase_auc: vec![("Transformer".into(), 0.7948)],
                seed: 12,
                served: "logistic".into(),
                served_quality: vec![("spend_sum_ratio".into(), 1.004)],
                margins: vec![MarginLine {
                    challenger: "logistic regression".into(),
                    reference: "transformer".into(),
                    metric: "segment_macro_f1".into(),
                    difference: 0.0001,
                    low: -0.0031,
                    high: 0.0035,
                    verdict: "tie".into(),
                }],
            }],
        }),
    }
}

#[test]
fn the_suite_report_has_the_machine_and_every_section() {
    let s = suite();
    let md = suite_markdown(&s);
    for heading in [
        "# segstream benchmarks",
        "## Machine",
        "## Ingest",
        "## State",
        "## Scoring",
        "## End to end",
        "## Training",
    ] {
        assert!(md.contains(heading), "missing {heading:?} in\n{md}");
    }
    assert!(md.contains(&format!("| CPU | {} |", s.machine.cpu)), "{md}");
    assert!(md.contains("| cores |"), "{md}");
    assert!(md.contains("A test run."), "{md}");
    // Each section is the benchmark's own table with its figures and ratio.
    assert!(md.contains("| ingest / raw | 0.750 |"), "{md}");
    assert!(
        md.contains("| 2 threads / one thread (scaling) | 1.80x |"),
        "{md}"
    );
    assert!(
        md.contains("| bytes per event (key + protobuf value) | 81 B |"),
        "{md}"
    );
    assert!(
        md.contains("| memory per customer (mean) | 936 B |"),
        "{md}"
    );
    assert!(md.contains("| restore / raw | 1.00 |"), "{md}");
    assert!(md.contains("| 64 | 38900 | 37600 | 0.967 | 3.3% |"), "{md}");
    assert!(
        md.contains("| replay with features / plain replay | 6.5 |"),
        "{md}"
    );
    assert!(md.contains("| whole run, per 1M events | 58.0 s |"), "{md}");
    assert!(
        md.contains("| validation purchase AUC, Transformer | 0.8610 |"),
        "{md}"
    );
    assert!(md.contains("## Training on a sparse history"), "{md}");
    assert!(
        md.contains(
            "| 12 | logistic | 1.004 | – | – | logistic regression − transformer \
             segment_macro_f1 +0.0001 [-0.0031, +0.0035] tie |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| training (generated, purchases only history: 422075 events"),
        "{md}"
    );
    assert!(md.contains("| same, p99 | 480 ms |"), "{md}");
    assert!(
        md.contains("| CPU per event: pipeline; floor | 60.0 µs; 20.0 µs |"),
        "{md}"
    );
    assert!(
        md.contains("| pipeline CPU / floor CPU per event | 3.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| CPU per event: pipeline; floor | unknown; 9.5 µs |"),
        "{md}"
    );
    assert!(md.contains("| same, p99 | 210 ms |"), "{md}");
    assert!(
        md.contains(
            "| latency run at half the sustained rate | 4500 events/s fed (asked 4500), \
             45000 segment changes; machine busy 61 % |"
        ),
        "{md}"
    );
    assert!(md.contains("machine busy unknown"), "{md}");
    assert!(
        md.contains(
            "| realistic traffic: a month of generated behaviour, 10000 events of 580 customers |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| segment changes published; dead letters (late) | 950; 3 (0) |"),
        "{md}"
    );
    assert!(
        md.contains("| CPU per event with live outcomes | 12.00 µs (1.200 of without) |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| outcomes published; changelog record bytes without / with; changelog records per event without / with | 1234; 760 / 800; 0.140 / 0.180 |"
        ),
        "{md}"
    );
    // A failed realistic-traffic run is one row; the run's other figures stand.
    assert!(
        md.contains(
            "| realistic traffic: a month of generated behaviour | failed: the group did not \
             settle   in time |"
        ),
        "{md}"
    );
    assert!(md.contains("| 64 | 38000 | 37600 | 1.1% |"), "{md}");
    assert!(md.contains("## End to end with the Transformer"), "{md}");
    assert!(
        md.contains("| end to end, transformer model (10000 events)"),
        "{md}"
    );
    // A failure is said, on one line.
    assert!(md.contains("Failed: out of memory at 1M"), "{md}");
    assert!(!md.contains("Not run (skipped)."), "{md}");
    assert_eq!(s.failures(), vec!["state"]);

    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["ingest"]["done"]["events"], 3000);
    assert_eq!(json["state"][0]["done"]["restore"]["records"], 1000);
    assert_eq!(json["state"][1]["failed"], "out of memory\nat 1M");
    assert_eq!(json["score"]["done"][0]["batch"], 64);
    assert_eq!(json["e2e"]["done"]["latency"]["p99_ms"], 480.0);
    assert_eq!(
        json["e2e"]["done"]["latency_quarter"]["machine_busy_pct"],
        40.0
    );
    assert_eq!(json["e2e"]["done"]["history"]["done"]["ratio"], 0.235);
    assert_eq!(json["train"]["done"]["examples"][0], 90_000);
    assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
}

/// `bench all` with only the ingest benchmark, a few thousand events against
/// the real broker: both files are written, every section is there, and the
/// ingest pass accounts for every generated event.
#[test]
fn bench_all_writes_markdown_and_json_with_the_ingest_figures() {
    let dir = tempfile::tempdir().unwrap();
    let (md_path, json_path) = (dir.path().join("B.md"), dir.path().join("b/all.json"));
    let out = segstream()
        .env("SEGSTREAM__KAFKA__BOOTSTRAP_SERVERS", common::bootstrap())
        .args(["bench", "all", "--skip", "state,score,e2e,train"])
        .args(["--ingest-events", "3000", "--markdown"])
        .arg(&md_path)
        .arg("--json")
        .arg(&json_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(&md_path).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), md.trim());
    for heading in [
        "## Machine",
        "## Ingest",
        "## State",
        "## Scoring",
        "## End to end",
        "## Training",
    ] {
        assert!(md.contains(heading), "missing {heading:?} in\n{md}");
    }
    assert!(
        md.contains("| ingest (3000 events, 6 partitions × 3 topics"),
        "{md}"
    );
    assert_eq!(md.matches("Not run (skipped).").count(), 6, "{md}");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let ingest = &json["ingest"]["done"];
    assert_eq!(ingest["events"], 3000, "{json}");
    let sum: u64 = ["applied", "duplicates", "late", "refused"]
        .iter()
        .map(|k| ingest[k].as_u64().unwrap())
        .sum();
    assert_eq!(
        sum, 3000,
        "every record is applied, a duplicate, late or refused"
    );
    // Generated events are valid and fit the stores' lateness: all applied.
    assert_eq!(ingest["refused"], 0);
    assert_eq!(ingest["late"], 0);
    assert!(ingest["customers"].as_u64().unwrap() > 10);
    assert!(ingest["bytes_per_event"].as_f64().unwrap() > 20.0);
    assert!(ingest["raw_events_per_second"].as_f64().unwrap() > 0.0);
    assert!(ingest["pipeline_events_per_second"].as_f64().unwrap() > 0.0);
    // The threaded pass ran too (with its share of partitions per thread).
    assert!(ingest["threads"].as_u64().unwrap() >= 1);
    assert!(ingest["threaded_events_per_second"].as_f64().unwrap() > 0.0);
    assert!(md.contains("threads / one thread (scaling)"), "{md}");
    assert_eq!(json["train"], "skipped");
}

/// `bench train` with a tiny model on about 20k events: it trains into a
/// temporary registry and reports one epoch and the per-1M figures.
#[test]
fn bench_train_reports_a_tiny_run() {
    let Ok(lib) = std::env::var("ORT_DYLIB_PATH") else {
        assert!(
            std::env::var("SEGSTREAM_TEST_REQUIRE_TOOLS").is_err(),
            "ORT_DYLIB_PATH is not set"
        );
        eprintln!("skipped: ORT_DYLIB_PATH is not set (make test provisions it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("segstream.toml");
    let mut settings = segstream::config::Config::default();
    settings.score.onnxruntime_library = lib;
    settings.train.d_model = 16;
    settings.train.heads = 2;
    settings.train.layers = 1;
    settings.train.ffn_dim = 32;
    settings.train.batch_size = 64;
    common::write_config(&config, &settings);
    let json_path = dir.path().join("train.json");
    let out = segstream()
        .arg("--config")
        .arg(&config)
        .args([
            "bench", "train", "--events", "20000", "--epochs", "2", "--json",
        ])
        .arg(&json_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("| seconds per epoch (2 epochs) |"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(json["epochs"], 2);
    assert_eq!(json["days"], 180);
    let events = json["events"].as_u64().unwrap();
    assert!((15_000..30_000).contains(&events), "{events}");
    assert!(json["examples"][0].as_u64().unwrap() > 0);
    assert!(json["parameters"].as_u64().unwrap() > 0);
    for k in [
        "plain_replay_seconds",
        "replay_seconds",
        "seconds_per_epoch",
        "seconds_per_million_total",
    ] {
        assert!(json[k].as_f64().unwrap() > 0.0, "{k}: {json}");
    }
    let total = json["seconds_per_million_total"].as_f64().unwrap();
    let one = json["seconds_per_million_replay_epoch"].as_f64().unwrap();
    assert!(
        total > one,
        "two epochs and the export take longer than replay + one epoch"
    );
}
