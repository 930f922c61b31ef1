use std::sync::Arc;

use super::*;

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_tally_reaches_the_metrics_only_when_flushed() {
    let m = Metrics::new().unwrap();
    let mut tally = m.tally();
    let topic: Arc<str> = Arc::from("events.browse");
    for _ in 0..3 {
        tally.consumed(&topic);
        tally.accepted(&topic, EventKind::Browse);
    }
    tally.consumed(&topic);
    tally.refused(Reason::Late, true);
    tally.duplicate();
    assert_eq!(m.accepted("events.browse", EventKind::Browse), 0);
    tally.flush();
    assert_eq!(m.accepted("events.browse", EventKind::Browse), 3);
    assert_eq!(m.dead_lettered(Reason::Late), 1);
    let text = m.render();
    assert_eq!(
        value(
            &text,
            "segstream_records_consumed_total{topic=\"events.browse\"}"
        ),
        Some(4.0)
    );
    assert_eq!(value(&text, "segstream_late_events_total"), Some(1.0));
    assert_eq!(
        value(&text, "segstream_dead_letters_truncated_total"),
        Some(1.0)
    );
    assert_eq!(value(&text, "segstream_duplicate_events_total"), Some(1.0));
    assert_eq!(
        value(&text, "segstream_ingest_batch_records_count"),
        Some(1.0)
    );
    // Regression (issue 16): a record stamped near the epoch (a backfill
    // producer) is not a latency sample.
    m.observe_end_to_end(&[1, 9_999_000, -1], 10_000_000);
    let text = m.render();
    assert_eq!(
        value(&text, "segstream_end_to_end_seconds_count"),
        Some(1.0)
    );
    assert_eq!(value(&text, "segstream_end_to_end_seconds_sum"), Some(1.0));
    // A second flush without new records changes nothing.
    tally.flush();
    assert_eq!(m.accepted("events.browse", EventKind::Browse), 3);
    // Regression: events applied after the event-time merge, in a cycle
    // that consumed no new record, are counted too.
    tally.accepted(&topic, EventKind::Browse);
    tally.flush();
    assert_eq!(m.accepted("events.browse", EventKind::Browse), 4);
}

#[test]
fn alert_series_exist_before_their_first_increment() {
    let text = Metrics::new().unwrap().render();
    for series in [
        "segstream_transactions_total{outcome=\"aborted\"}",
        "segstream_model_load_failures_total{reason=\"golden\"}",
        "segstream_dead_letters_total{reason=\"late\",stage=\"state\"}",
    ] {
        assert_eq!(value(&text, series), Some(0.0), "{series} in\n{text}");
    }
    #[cfg(target_os = "linux")]
    assert!(value(&text, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));
}

#[test]
fn lag_series_go_away_with_their_partition() {
    let m = Metrics::new().unwrap();
    m.set_lag("events.browse", 2, 17);
    m.set_lag("events.browse", 1, -3);
    let text = m.render();
    let series = "segstream_consumer_lag_records{partition=\"2\",topic=\"events.browse\"}";
    assert_eq!(value(&text, series), Some(17.0));
    assert_eq!(
        value(
            &text,
            "segstream_consumer_lag_records{partition=\"1\",topic=\"events.browse\"}"
        ),
        Some(0.0),
        "negative lag (stale end offset) reads as zero"
    );
    m.forget_lag("events.browse", 2);
    assert_eq!(value(&m.render(), series), None);
}

#[test]
fn end_to_end_latency_is_observed_per_record_and_skips_unknown_timestamps() {
    let m = Metrics::new().unwrap();
    m.observe_end_to_end(&[1_000, 1_500, -1], 2_000);
    let text = m.render();
    assert_eq!(
        value(&text, "segstream_end_to_end_seconds_count"),
        Some(2.0)
    );
    assert_eq!(value(&text, "segstream_end_to_end_seconds_sum"), Some(1.5));
}
