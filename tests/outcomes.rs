//! Live outcomes through crashes and rebalances (issue 39): a generated
//! history crosses a dozen cuts while instances join, leave and are killed
//! (SIGKILL) mid-stream; a verifier reads the outcomes topic with
//! read_committed and finds every snapshot whose horizon the input passed
//! resolved exactly once, with the trainer's labels and the offline
//! replay's predictions (`predict --as-of` at the cut, the same model).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prost::Message as _;

use common::pipeline::*;
use segstream::event::encode::WireFormat;
use segstream::event::proto::Outcome;
use segstream::event::{Event, Payload};
use segstream::generate::behaviour::{history, GeneratorConfig};
use segstream::generate::kafka::{produce, ProduceOptions};
use segstream::model::{ModelFiles, Registry};
use segstream::train::examples::{LabelRules, Outcome as Happened};

const DAY: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_survive_crashes_and_rebalances_exactly_once() {
    common::require_onnxruntime();
    let mut s = setup_named("outc", 3, "reference").await;
    let outcomes = format!("{}.outcomes", s.output);
    common::create_topics(&[&outcomes], 1).await;
    // One input topic: the history arrives in event-time order (no late
    // events), all kinds together.
    let input = s.browse.clone();
    let outcomes_topic = outcomes.clone();
    // A shadow model: another network, scored at every snapshot.
    let registry = Registry::new(&s.settings.score.registry);
    {
        use segstream::features::{FeatureSpec, Featurizer};
        let limits = segstream::state::StateLimits::default();
        let featurizer = Featurizer::new(FeatureSpec::for_state(limits), limits).unwrap();
        let (onnx, manifest) = segstream::model::reference::build(
            &featurizer,
            &segstream::model::Segment::names(),
            "m2",
            5,
        )
        .unwrap();
        registry.publish(&onnx, &manifest).unwrap();
        registry.add_shadow("m2").unwrap();
    }
    s.configure(|c| {
        c.input.topics = vec![input];
        c.output.outcomes_topic = outcomes_topic;
        c.train.sample_every = Duration::from_secs(7 * 86_400);
        c.train.horizon = Duration::from_secs(14 * 86_400);
        c.train.lookback = Duration::from_secs(30 * 86_400);
        // Short cycles: the kills land between many commits.
        c.pipeline.max_cycle_records = 200;
        c.pipeline.commit_interval = Duration::from_millis(500);
    });
    let gen = GeneratorConfig {
        customers: 150,
        days: 100,
        seed: 21,
        ..GeneratorConfig::default()
    };
    let events: Vec<Event> = history(&gen).collect();
    // Paced over about 12 seconds: the instances below join, leave and are
    // killed while the history streams through them.
    let options = ProduceOptions {
        format: WireFormat::Protobuf,
        history: true,
        live_for: None,
        rate: Some(events.len() as f64 / 12.0),
        max_events: None,
        pace: Default::default(),
        bots: 0,
    };
    let (settings, generator) = (s.settings.clone(), gen.clone());
    let producing = tokio::spawn(async move {
        produce(&settings, &generator, &options, std::future::pending())
            .await
            .unwrap()
    });

    // Instances join, leave and are killed while the history streams through.
    let log = s.dir.path().join("run.log");
    let mut a = start_as(&s.config, &log, "a");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut b = start_as(&s.config, &log, "b");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        !consumed_all(&s),
        "the history was consumed before the first kill:\n{}",
        tail(&log)
    );
    a.kill().unwrap();
    a.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut a = start_as(&s.config, &log, "a");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    b.kill().unwrap();
    b.wait().unwrap();
    let produced = producing.await.unwrap();
    assert_eq!(produced.events, events.len() as u64);
    let mut b = start_as(&s.config, &log, "b");
    wait_consumed(&s, std::slice::from_mut(&mut a), &log).await;
    for child in [&mut a, &mut b] {
        sigterm(child);
        assert!(
            child.wait().unwrap().success(),
            "clean stop:\n{}",
            tail(&log)
        );
    }
    keep_log(&log);

    // The verifier. The last transaction's records become readable
    // (read_committed) once its markers are written, just after the commit
    // returns: read until two reads agree.
    let mut rows = read_all(&outcomes);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = read_all(&outcomes);
        if again.len() == rows.len() {
            break;
        }
        rows = again;
    }
    let published: Vec<Outcome> = rows
        .iter()
        .map(|r| Outcome::decode(r.3.as_deref().unwrap_or_default()).unwrap())
        .collect();
    // Every baseline is resolved with the champion, on the same customers
    // and cuts, with the same realized fields.
    let all = published.len();
    let baselines = common::pipeline::check_baselines(&published);
    let everything = published.clone();
    let shadows: BTreeMap<(String, i64), &Outcome> = everything
        .iter()
        .filter(|o| o.role == "shadow")
        .map(|o| ((o.customer_id.clone(), o.cut_ms), o))
        .collect();
    assert_eq!(
        shadows.len(),
        everything.iter().filter(|o| o.role == "shadow").count(),
        "a shadow snapshot resolved twice"
    );
    let published: Vec<Outcome> = published
        .into_iter()
        .filter(|o| o.role == "champion")
        .collect();
    let keys: BTreeSet<(String, i64)> = published
        .iter()
        .map(|o| (o.customer_id.clone(), o.cut_ms))
        .collect();
    assert_eq!(
        keys.len(),
        published.len(),
        "a snapshot resolved twice:\n{}",
        tail(&log)
    );
    let (every, horizon, lookback) = (7 * DAY, 14 * DAY, 30 * DAY);
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.event_time_ms);
    let (first, last) = (
        sorted[0].event_time_ms,
        sorted[sorted.len() - 1].event_time_ms,
    );
    let mut timelines: BTreeMap<&str, Vec<Happened>> = BTreeMap::new();
    for e in &sorted {
        timelines.entry(&e.customer_id).or_default().push(Happened {
            time_ms: e.event_time_ms,
            spend_minor: match &e.payload {
                Payload::Purchase(p) => p.total_minor.max(0),
                _ => -1,
            },
        });
    }
    let in_population = |c: &str, t: i64| {
        timelines[c]
            .iter()
            .filter(|h| h.time_ms <= t)
            .map(|h| h.time_ms)
            .max()
            .is_some_and(|seen| seen > t - lookback)
    };
    // Every cut whose horizon ended two days before the input's end (each
    // partition's watermark is its own latest event) is resolved for its
    // whole population; nothing outside the population ever is.
    let mut must = BTreeSet::new();
    let mut may = BTreeSet::new();
    let mut t = (first / every + 1) * every - 1;
    while t + horizon < last {
        for c in timelines.keys().filter(|c| in_population(c, t)) {
            may.insert((c.to_string(), t));
            if t + horizon < last - 2 * DAY {
                must.insert((c.to_string(), t));
            }
        }
        t += every;
    }
    let missing: Vec<_> = must.difference(&keys).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} snapshots lost, e.g. {missing:?}:\n{}",
        must.difference(&keys).count(),
        must.len(),
        tail(&log)
    );
    let extra: Vec<_> = keys.difference(&may).take(5).collect();
    assert!(
        extra.is_empty(),
        "outcomes outside the population: {extra:?}"
    );
    assert!(must.len() >= 500, "only {} snapshots", must.len());

    // Labels are the trainer's; predictions the offline replay's.
    let rules = LabelRules::from_config(&s.settings.train);
    let files = ModelFiles::read(&registry.dir("m1").unwrap()).unwrap();
    let shadow_files = ModelFiles::read(&registry.dir("m2").unwrap()).unwrap();
    let mut by_cut: BTreeMap<i64, Vec<&Outcome>> = BTreeMap::new();
    for o in &published {
        let labels = rules.label(&timelines[o.customer_id.as_str()], o.cut_ms);
        assert_eq!(
            (
                o.purchased,
                o.churned,
                o.spend_minor,
                o.realized_segment.as_str()
            ),
            (
                labels.purchased,
                labels.churned,
                labels.spend_minor,
                labels.segment.name()
            ),
            "{} at {}",
            o.customer_id,
            o.cut_ms
        );
        by_cut.entry(o.cut_ms).or_default().push(o);
    }
    let mut worst = 0f32;
    for (cut, live) in &by_cut {
        let offline =
            segstream::train::predict::predict(&s.settings, &files, events.clone(), *cut).unwrap();
        let rows: BTreeMap<&str, _> = offline
            .rows
            .iter()
            .map(|r| (r.customer_id.as_str(), r))
            .collect();
        let offline_shadow =
            segstream::train::predict::predict(&s.settings, &shadow_files, events.clone(), *cut)
                .unwrap();
        let shadow_rows: BTreeMap<&str, _> = offline_shadow
            .rows
            .iter()
            .map(|r| (r.customer_id.as_str(), r))
            .collect();
        for o in live {
            let r = rows[o.customer_id.as_str()];
            assert_eq!(o.model_version, "m1");
            worst = worst
                .max((o.purchase_probability - r.purchase_probability).abs())
                .max((o.churn_probability - r.churn_probability).abs());
            // The shadow model, at the same snapshot: its own offline replay.
            let sh = shadows
                .get(&(o.customer_id.clone(), o.cut_ms))
                .unwrap_or_else(|| {
                    panic!("no shadow outcome for {} at {}", o.customer_id, o.cut_ms)
                });
            let r = shadow_rows[o.customer_id.as_str()];
            assert_eq!(
                (sh.model_version.as_str(), sh.purchased, sh.spend_minor),
                ("m2", o.purchased, o.spend_minor)
            );
            worst = worst
                .max((sh.purchase_probability - r.purchase_probability).abs())
                .max((sh.churn_probability - r.churn_probability).abs());
        }
    }
    assert_eq!(
        shadows.len(),
        published.len(),
        "one shadow outcome per champion outcome"
    );
    eprintln!(
        "outcomes: {all} published ({} champion, {} shadow; baselines {baselines:?}) over {} cuts, {} required; largest prediction difference {worst}",
        published.len(),
        shadows.len(),
        by_cut.len(),
        must.len()
    );
    assert!(
        worst <= 1e-5,
        "live and offline predictions differ by {worst}"
    );

    check_report(&everything, s.dir.path());
}

/// `segstream report` on these outcomes prints the live table and writes a
/// page whose figures a real browser (headless Chromium) renders.
fn check_report(outcomes: &[Outcome], dir: &std::path::Path) {
    use segstream::pipeline::output::OutcomeJson;
    let file = dir.join("outcomes.ndjson");
    let mut text = String::new();
    for o in outcomes {
        text.push_str(&serde_json::to_string(&OutcomeJson::new(o)).unwrap());
        text.push('\n');
    }
    std::fs::write(&file, text).unwrap();
    let out = dir.join("report");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_segstream"))
        .args(["report", "--file"])
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!("{stdout}");
    for wanted in [
        "| m1 | champion |",
        "| rfm_rules | baseline |",
        "m1 − rfm_rules",
    ] {
        assert!(stdout.contains(wanted), "{wanted} in:\n{stdout}");
    }
    let page = out.join("report.html");
    let Some(chromium) = common::tool("SEGSTREAM_TEST_CHROMIUM", "Chromium (Debian)") else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ];
    let dom = std::process::Command::new(&chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    let figures = dom.matches("<figure").count();
    let svgs = dom.matches("<svg").count();
    assert_eq!(
        (figures, svgs),
        (5, 5),
        "the page's figures, as Chromium parsed it"
    );
    for id in [
        "auc_per_cut",
        "calibration_per_cut",
        "reliability",
        "gains",
        "segments",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "figure {id}");
    }
    let shot = out.join("report.png");
    let status = std::process::Command::new(&chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1400,2400")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let png = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        png > 20_000,
        "a screenshot of the page ({png} bytes): {}",
        String::from_utf8_lossy(&status.stderr)
    );
    if let Some(keep) = std::env::var_os("SEGSTREAM_KEEP_REPORT") {
        let keep = std::path::PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&file, keep.join("outcomes.ndjson")).unwrap();
        for f in ["report.html", "report.png"] {
            std::fs::copy(out.join(f), keep.join(f)).unwrap();
        }
    }
}
