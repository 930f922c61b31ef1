//! Training/serving skew, end to end: a Transformer trained by `segstream
//! train` is served by `segstream run` against the real broker, and every
//! segment change the pipeline published carries scores equal to those of
//! an offline replay of the same events up to the change's `as_of_ms`
//! (`train::predict`: the trainer's replay, one customer at a time, through
//! `CustomerState` and the featurizer). The Transformer reads every input,
//! so equal scores mean equal features. (That the trainer's example builder
//! computes exactly this replay's features is a unit test in
//! `train::examples`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::pipeline::{consumed_all_of, keep_log, outputs, sigterm, start, tail, Setup};
use segstream::config::{Config, ScoreConfig, TrainConfig};
use segstream::event::encode::WireFormat;
use segstream::event::Event;
use segstream::generate::behaviour::{history, GeneratorConfig};
use segstream::generate::kafka::{produce, ProduceOptions};
use segstream::model::{ModelFiles, Registry};
use segstream::train::{self, Progress, TrainOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_scores_equal_offline_replay_scores() {
    let lib = std::env::var("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH is not set; run `make test` (it provisions ONNX Runtime)");
    let id = common::unique("skew");
    let topic = format!("{id}.events");
    let partitions = 2;
    // The history's records carry old event times as timestamps: keep them.
    common::create_topics_with(&[&topic], partitions, &[("retention.ms", "-1")]).await;
    common::create_topics_with(
        &[&format!("{id}.changelog"), &format!("{id}.current")],
        partitions,
        &[("cleanup.policy", "compact")],
    )
    .await;
    common::create_topics(
        &[
            &format!("{id}.dlq"),
            &format!("{id}.segments"),
            &format!("{id}.outcomes"),
        ],
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();

    // History: the generator's world, all kinds in one topic so that the
    // pipeline reads it in event-time order (no late events).
    let gen = GeneratorConfig {
        customers: 120,
        days: 110,
        seed: 11,
        ..GeneratorConfig::default()
    };
    let events: Vec<Event> = history(&gen).collect();
    let mut config = Config::default();
    config.kafka.bootstrap_servers = common::bootstrap();
    config.kafka.group_id = format!("{id}.group");
    config.input.topics = vec![topic.clone()];
    config.score = ScoreConfig {
        onnxruntime_library: lib,
        registry: dir.path().join("models"),
        ..ScoreConfig::default()
    };
    config.train = TrainConfig {
        d_model: 16,
        heads: 2,
        ffn_dim: 32,
        max_epochs: 2,
        threads: 1,
        ..TrainConfig::default()
    };

    // Train and promote a Transformer on that history.
    let registry = Registry::new(&config.score.registry);
    std::fs::create_dir_all(registry.root()).unwrap();
    let report = Progress::silent(|p| {
        train::train(
            &config,
            events.clone(),
            &registry,
            &TrainOptions {
                version: Some("skew-1".into()),
                ..Default::default()
            },
            p,
        )
    })
    .expect("training succeeds");
    assert!(report.promoted, "{}", report.decision);

    let options = ProduceOptions {
        format: WireFormat::Protobuf,
        history: true,
        live_for: None,
        rate: None,
        max_events: None,
        pace: Default::default(),
        bots: 0,
    };
    let produced = produce(&config, &gen, &options, std::future::pending())
        .await
        .unwrap();
    assert_eq!(produced.events, events.len() as u64);

    // The pipeline runs on the trainer's configuration, with its own topics.
    let mut settings = config.clone();
    settings.state.changelog_topic = format!("{id}.changelog");
    settings.dead_letter.topic = format!("{id}.dlq");
    settings.output.topic = format!("{id}.segments");
    settings.output.current_topic = format!("{id}.current");
    // Issue 39: live outcomes, checked below against the offline replay.
    settings.output.outcomes_topic = format!("{id}.outcomes");
    settings.decide.margin = 0.0;
    settings.decide.min_dwell = Duration::from_millis(1);
    settings.pipeline.transactional_id = format!("{id}-instance");
    settings.pipeline.http_listen = String::new();
    let config_path = dir.path().join("segstream.toml");
    common::write_config(&config_path, &settings);
    let log = dir.path().join("run.log");
    let mut child = start(&config_path, &log);
    let s = Setup {
        dir: tempfile::tempdir().unwrap(),
        config: config_path.clone(),
        settings,
        browse: topic.clone(),
        purchase: topic.clone(),
        review: topic.clone(),
        changelog: format!("{id}.changelog"),
        dlq: format!("{id}.dlq"),
        output: format!("{id}.segments"),
        current: format!("{id}.current"),
        risk: String::new(),
        group: format!("{id}.group"),
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    while !consumed_all_of(&s, &s.group, partitions) {
        assert!(
            Instant::now() < deadline,
            "not consumed in time:\n{}",
            tail(&log)
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "run exited:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    sigterm(&child);
    let _ = child.wait();
    keep_log(&log);

    // Offline: the same events, replayed up to each change's as_of, scored
    // with the same model directory.
    let files = ModelFiles::read(&registry.dir("skew-1").unwrap()).unwrap();
    // Issue 38: the model takes the classical inputs (BG/NBD, Gamma-Gamma)
    // with the parameters fitted at training, stored in its feature spec;
    // the same model scored with those inputs "not defined" shows that the
    // comparison below would see serving compute them otherwise.
    assert!(
        files.manifest.feature_spec.classical.is_some(),
        "the classical models were fitted: {:?}",
        files.manifest.feature_spec
    );
    let mut without_classical = files.clone();
    without_classical.manifest.feature_spec.classical = None;
    let mut classical_moves = 0f32;
    let mut by_customer: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in &events {
        by_customer.entry(&e.customer_id).or_default().push(e);
    }
    let chains = outputs(&s);
    let mut compared = 0;
    let mut worst = 0f32;
    let mut explain_worst = 0f32;
    let (mut reasons_compared, mut with_values) = (0, 0);
    for (customer, changes) in &chains {
        for c in changes
            .iter()
            .filter(|c| c.model_version == "skew-1")
            .take(4)
        {
            let mine: Vec<Event> = by_customer[customer.as_str()]
                .iter()
                .map(|e| (*e).clone())
                .collect();
            let offline =
                train::predict::predict(&config, &files, mine.clone(), c.as_of_ms).unwrap();
            assert_eq!(offline.rows.len(), 1);
            let row = &offline.rows[0];
            if compared < 20 {
                let plain =
                    train::predict::predict(&config, &without_classical, mine.clone(), c.as_of_ms)
                        .unwrap();
                for (a, b) in plain.rows[0].probabilities.iter().zip(&row.probabilities) {
                    classical_moves = classical_moves.max((a - b).abs());
                }
            }
            for (name, p) in offline.segments.iter().zip(&row.probabilities) {
                let served = c.scores[name];
                worst = worst.max((served - p).abs());
            }
            worst = worst.max((c.purchase_probability - row.purchase_probability).abs());
            worst = worst.max((c.churn_probability - row.churn_probability).abs());
            // Explanations: the reasons with their baseline reproduce, from
            // the published scores, ln p(segment) - ln p(previous segment)
            // on a change, the segment's centered log-probability on a first
            // classification; on a first classification the offline replay
            // (which explains against the average segment) gives the same
            // reasons, with the same values in the same units.
            assert_eq!(c.reasons.len(), 5 + 2, "{c:?}");
            let target = if c.previous_segment.is_empty() {
                let mean_ln =
                    c.scores.values().map(|p| p.ln()).sum::<f32>() / c.scores.len() as f32;
                c.scores[&c.segment].ln() - mean_ln
            } else {
                c.scores[&c.segment].ln() - c.scores[&c.previous_segment].ln()
            };
            let explained =
                c.reasons_baseline + c.reasons.iter().map(|r| r.contribution).sum::<f32>();
            explain_worst = explain_worst.max((explained - target).abs() / target.abs().max(1.0));
            assert!(
                c.reasons[0].contribution >= c.reasons[1].contribution,
                "the largest push towards the segment first: {c:?}"
            );
            if row.segment == c.segment && c.previous_segment.is_empty() {
                let names = |rs: &[segstream::event::proto::Reason]| {
                    rs.iter()
                        .map(|r| (r.feature.clone(), r.unit.clone(), r.value.map(|v| v as f32)))
                        .collect::<Vec<_>>()
                };
                assert_eq!(names(&c.reasons), names(&row.reasons));
                for (a, b) in c.reasons.iter().zip(&row.reasons) {
                    explain_worst = explain_worst.max((a.contribution - b.contribution).abs());
                }
                reasons_compared += 1;
            }
            if c.reasons.iter().any(|r| r.value.is_some()) {
                with_values += 1;
            }
            compared += 1;
        }
    }
    assert!(
        compared >= 100,
        "only {compared} changes to compare:\n{}",
        tail(&log)
    );
    assert!(
        classical_moves > 1e-4,
        "the classical inputs move the scores by only {classical_moves}"
    );
    assert!(
        worst <= 1e-5,
        "served and replayed scores differ by {worst} over {compared} changes"
    );
    assert!(
        reasons_compared >= 10 && with_values >= compared / 2,
        "{reasons_compared} first classifications' reasons compared, {with_values} of {compared} changes with feature values"
    );
    assert!(
        explain_worst <= 1e-3,
        "reasons miss the centered log-probability (or the replay's reasons) by {explain_worst}"
    );

    check_outcomes(
        &config,
        &s.settings,
        &files,
        &events,
        &format!("{id}.outcomes"),
        &log,
    );
}

/// Issue 39: the live outcomes the pipeline published equal, per customer
/// and cut, `predict --as-of` at the cut (the same model, the trainer's
/// population rule) with the trainer's labels; their AUC, calibration and
/// spend ratio per cut equal the offline figures within 1e-6; every
/// snapshot whose horizon the input passed is published, once.
fn check_outcomes(
    config: &Config,
    settings: &Config,
    files: &ModelFiles,
    events: &[Event],
    topic: &str,
    log: &std::path::Path,
) {
    use prost::Message as _;
    use segstream::event::proto::Outcome;
    use segstream::event::Payload;
    use segstream::train::examples::{LabelRules, Outcome as Happened};
    use segstream::train::metrics::auc;
    use std::collections::BTreeSet;

    let rows = common::pipeline::read_all(topic);
    let published: Vec<Outcome> = rows
        .iter()
        .map(|r| Outcome::decode(r.3.as_deref().unwrap_or_default()).unwrap())
        .collect();
    // Every baseline is resolved with the champion, on the same customers
    // and cuts, with the same realized fields.
    let all = published.len();
    let baselines = common::pipeline::check_baselines(&published);
    let published: Vec<Outcome> = published
        .into_iter()
        .filter(|o| o.role == "champion")
        .collect();
    let keys: BTreeSet<(String, i64)> = published
        .iter()
        .map(|o| (o.customer_id.clone(), o.cut_ms))
        .collect();
    assert_eq!(keys.len(), published.len(), "an outcome published twice");
    // Drift: every champion outcome carries its features' bins in the
    // model's reference, and the report reads a finite index per cut and
    // feature from them.
    let reference = files
        .manifest
        .reference
        .as_ref()
        .expect("a trained model's manifest has a drift reference");
    let f = segstream::features::CUSTOMER_DIM;
    assert_eq!(reference.features.len(), f);
    for o in &published {
        assert_eq!(o.feature_bins.len(), f, "{o:?}");
        for (b, binned) in o.feature_bins.iter().zip(&reference.features) {
            assert!((*b as usize) < binned.bins(), "{} bin {b}", binned.name);
        }
    }
    let drift = segstream::report::drift(
        &published,
        &BTreeMap::from([(files.manifest.version.clone(), reference.clone())]),
    );
    let cut_count = published
        .iter()
        .map(|o| o.cut_ms)
        .collect::<BTreeSet<_>>()
        .len();
    assert_eq!(drift.len(), cut_count * (f + 3));
    assert!(drift.iter().all(|d| d.psi.is_finite() && d.psi >= 0.0));
    let top = drift.iter().max_by(|a, b| a.psi.total_cmp(&b.psi)).unwrap();
    let last = drift.iter().map(|d| d.cut_ms).max().unwrap();
    let top_last = drift
        .iter()
        .filter(|d| d.cut_ms == last)
        .max_by(|a, b| a.psi.total_cmp(&b.psi))
        .unwrap();
    eprintln!(
        "drift: {} indexes over {cut_count} cuts; largest {} {:.3} at {}; at the last cut {} {:.3}",
        drift.len(),
        top.feature,
        top.psi,
        top.cut_ms,
        top_last.feature,
        top_last.psi
    );
    let at = |f: &str| reference.features.iter().find(|b| b.name == f).unwrap();
    eprintln!(
        "reference {}: {:?} {:?}",
        top.feature,
        at(&top.feature).edges,
        at(&top.feature).shares
    );
    let rules = LabelRules::from_config(&settings.train);
    let ms = |d: std::time::Duration| d.as_millis() as i64;
    let (every, horizon, lookback) = (
        ms(settings.train.sample_every),
        ms(settings.train.horizon),
        ms(settings.train.lookback),
    );
    let last = events.iter().map(|e| e.event_time_ms).max().unwrap();
    let first = events.iter().map(|e| e.event_time_ms).min().unwrap();
    let mut timelines: BTreeMap<&str, Vec<Happened>> = BTreeMap::new();
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.event_time_ms);
    for e in &sorted {
        timelines.entry(&e.customer_id).or_default().push(Happened {
            time_ms: e.event_time_ms,
            spend_minor: match &e.payload {
                Payload::Purchase(p) => p.total_minor.max(0),
                _ => -1,
            },
        });
    }
    let (mut compared, mut cuts, mut worst) = (0usize, 0usize, 0f32);
    // Every calendar cut whose horizon ended well before the input's end
    // (two days: each partition's watermark is its own latest event).
    let mut t = (first / every + 1) * every - 1;
    while t + horizon < last - 2 * 86_400_000 {
        let offline = train::predict::predict(config, files, events.to_vec(), t).unwrap();
        let mut live: Vec<&Outcome> = published.iter().filter(|o| o.cut_ms == t).collect();
        live.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
        let population: Vec<_> = offline
            .rows
            .iter()
            .filter(|r| {
                let seen = timelines[r.customer_id.as_str()]
                    .iter()
                    .filter(|h| h.time_ms <= t)
                    .map(|h| h.time_ms)
                    .max()
                    .unwrap_or(i64::MIN);
                seen > t - lookback
            })
            .collect();
        assert_eq!(
            live.iter()
                .map(|o| o.customer_id.as_str())
                .collect::<Vec<_>>(),
            population
                .iter()
                .map(|r| r.customer_id.as_str())
                .collect::<Vec<_>>(),
            "the population at cut {t}:\n{}",
            tail(log)
        );
        let (mut p_live, mut p_off, mut bought) = (Vec::new(), Vec::new(), Vec::new());
        let (mut sum_live, mut sum_off, mut spend_live, mut spend_off, mut spend_real) =
            (0f64, 0f64, 0f64, 0f64, 0f64);
        for (o, r) in live.iter().zip(&population) {
            let labels = rules.label(&timelines[r.customer_id.as_str()], t);
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
                "{} at {t}",
                o.customer_id
            );
            assert_eq!(o.model_version, "skew-1");
            assert_eq!(o.horizon_ms, horizon);
            worst = worst
                .max((o.purchase_probability - r.purchase_probability).abs())
                .max((o.churn_probability - r.churn_probability).abs())
                .max(
                    (o.predicted_spend - r.predicted_spend).abs()
                        / r.predicted_spend.abs().max(1.0),
                );
            p_live.push(o.purchase_probability);
            p_off.push(r.purchase_probability);
            bought.push(labels.purchased);
            sum_live += f64::from(o.purchase_probability);
            sum_off += f64::from(r.purchase_probability);
            spend_live += f64::from(o.predicted_spend);
            spend_off += f64::from(r.predicted_spend);
            spend_real += labels.spend_minor as f64;
            compared += 1;
        }
        if bought.iter().any(|b| *b) && bought.iter().any(|b| !*b) {
            let (a, b) = (auc(&p_live, &bought), auc(&p_off, &bought));
            assert!(
                (a - b).abs() <= 1e-6,
                "purchase AUC at {t}: live {a}, offline {b}"
            );
        }
        let n = live.len().max(1) as f64;
        assert!(
            (sum_live / n - sum_off / n).abs() <= 1e-6,
            "calibration at {t}"
        );
        if spend_real > 0.0 {
            let (a, b) = (spend_live / spend_real, spend_off / spend_real);
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "spend ratio at {t}: {a} {b}"
            );
        }
        cuts += 1;
        t += every;
    }
    eprintln!(
        "live outcomes: {all} published ({} champion; baselines {baselines:?}), {compared} compared over {cuts} cuts, largest prediction difference {worst}",
        published.len()
    );
    assert!(
        baselines.iter().any(|b| b == "bgnbd_gamma_gamma"),
        "the trained model's classical parameters give the BG/NBD baseline: {baselines:?}"
    );
    assert!(
        cuts >= 5 && compared >= 300,
        "{compared} outcomes over {cuts} cuts compared:\n{}",
        tail(log)
    );
    assert!(
        worst <= 1e-5,
        "live and offline predictions differ by {worst} over {compared} outcomes"
    );
}
