//! Scoring against the real ONNX Runtime library (`make tools` provisions it;
//! `make test` exports `ORT_DYLIB_PATH`): the model contract, golden checks,
//! the reference model's parity with its plain-Rust forward pass and with the
//! Python `onnxruntime` package, and hot swap under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use segstream::config::ScoreConfig;
use segstream::features::{FeatureSpec, Featurizer};
use segstream::model::onnx::{Attr, Dim, Elem, GraphBuilder};
use segstream::model::reference::{self, ReferenceModel};
use segstream::model::{ModelFiles, Registry, Segment};
use segstream::score::{LoadedModel, ModelWatcher, PollOutcome, ScoreError, Scorer};
use segstream::state::StateLimits;
use segstream::telemetry::Metrics;

fn cfg() -> ScoreConfig {
    let lib = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
        panic!("ORT_DYLIB_PATH is not set; run `make test` (it provisions ONNX Runtime with `make tools`)")
    });
    ScoreConfig {
        onnxruntime_library: lib,
        ..ScoreConfig::default()
    }
}

fn limits() -> StateLimits {
    StateLimits::default()
}

fn featurizer() -> Featurizer {
    Featurizer::new(FeatureSpec::for_state(limits()), limits()).unwrap()
}

fn segments() -> Vec<String> {
    Segment::names()
}

fn reference_files(version: &str, seed: u64) -> ModelFiles {
    let (onnx, manifest) = reference::build(&featurizer(), &segments(), version, seed).unwrap();
    ModelFiles {
        dir: Default::default(),
        onnx,
        manifest,
    }
}

fn load(files: &ModelFiles) -> Result<LoadedModel, ScoreError> {
    LoadedModel::load(&cfg(), files, limits(), 1)
}

#[test]
fn the_reference_model_matches_its_rust_forward_pass() {
    let files = reference_files("ref-1", 7);
    let model = load(&files).expect("reference model loads and passes its golden check");
    let f = featurizer();
    assert_eq!(reference::golden_inputs(&f).unwrap().batch, 4);
    // Inputs other than the golden ones, through the scorer's zero-copy path.
    let batch = {
        use segstream::state::CustomerState;
        let empty = CustomerState::default();
        f.featurize(&[&empty, &empty], 1_790_000_000_000).unwrap()
    };
    let scores = model.score_on(0, &batch).unwrap();
    let rust = ReferenceModel::new(f.spec(), 5, 7).forward(
        segstream::model::GoldenInputs::from_batch(&batch)
            .unwrap()
            .as_inputs(),
    );
    for (a, b) in scores.outputs.segment_probs.iter().zip(&rust.segment_probs) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    assert_eq!(&*scores.model_version, "ref-1");
    let sum: f32 = scores.segment_probs(0).iter().sum();
    assert!((sum - 1.0).abs() < 1e-5);

    // Every output on varied customers (the golden inputs) within 1e-5.
    let g = &files.manifest.golden.inputs;
    let mut session = segstream::score::new_session(&cfg(), "ref-1", &files.onnx)
        .unwrap()
        .0;
    let ort = segstream::score::run_session(&mut session, g, f.spec(), 5).unwrap();
    let rust = ReferenceModel::new(f.spec(), 5, 7).forward(g.as_inputs());
    for (name, a, b) in [
        ("segment_probs", &ort.segment_probs, &rust.segment_probs),
        (
            "purchase_probability",
            &ort.purchase_probability,
            &rust.purchase_probability,
        ),
        (
            "churn_probability",
            &ort.churn_probability,
            &rust.churn_probability,
        ),
        (
            "predicted_spend",
            &ort.predicted_spend,
            &rust.predicted_spend,
        ),
    ] {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b.iter()) {
            assert!((x - y).abs() <= 1e-5, "{name}: {x} vs {y}");
        }
    }
    assert!(
        ort.segment_probs
            .chunks(5)
            .map(|r| r.iter().cloned().fold(0f32, f32::max))
            .any(|m| m < 0.99),
        "outputs are not degenerate"
    );
}

/// A graph like the reference model's but with one contract defect.
fn defective(defect: &str) -> Vec<u8> {
    let spec = featurizer().spec().clone();
    let n = spec.max_events as i64;
    let b = Dim::Dynamic("batch");
    let mut g = GraphBuilder::new("defective");
    let kind_elem = if defect == "dtype" {
        Elem::I32
    } else {
        Elem::I64
    };
    let kind_dims = if defect == "rank" {
        vec![b.clone(), Dim::Fixed(n), Dim::Fixed(1)]
    } else {
        vec![b.clone(), Dim::Fixed(n)]
    };
    g.input("event_kind", kind_elem, &kind_dims);
    g.input("event_category", Elem::I64, &[b.clone(), Dim::Fixed(n)]);
    g.input(
        "event_numeric",
        Elem::F32,
        &[b.clone(), Dim::Fixed(n), Dim::Fixed(6)],
    );
    g.input(
        "event_text",
        Elem::I64,
        &[
            b.clone(),
            Dim::Fixed(n),
            Dim::Fixed(spec.text_tokens as i64),
        ],
    );
    if defect != "missing" {
        g.input("event_mask", Elem::F32, &[b.clone(), Dim::Fixed(n)]);
    }
    g.input("customer_features", Elem::F32, &[b.clone(), Dim::Fixed(31)]);
    if defect == "extra" {
        g.input("coupon_history", Elem::F32, &[b.clone(), Dim::Fixed(3)]);
    }
    // Outputs from customer_features only.
    let w = g.init_f32("w", &[31, 5], &vec![0.01; 155]);
    let axis = g.init_i64("axis", &[1], &[1]);
    let logits = g.op("MatMul", &["customer_features", &w], &[]);
    g.op_into(
        "Softmax",
        &[&logits],
        "segment_probs",
        &[Attr::Int("axis", 1)],
    );
    for name in [
        "purchase_probability",
        "churn_probability",
        "predicted_spend",
    ] {
        g.op_into(
            "ReduceSum",
            &[&logits, &axis],
            name,
            &[Attr::Int("keepdims", 0)],
        );
    }
    g.output("segment_probs", Elem::F32, &[b.clone(), Dim::Fixed(5)]);
    for name in [
        "purchase_probability",
        "churn_probability",
        "predicted_spend",
    ] {
        g.output(name, Elem::F32, std::slice::from_ref(&b));
    }
    g.finish("defective test model", &[])
}

fn rejection(files: &ModelFiles) -> String {
    load(files).expect_err("must be rejected").to_string()
}

#[test]
fn contract_violations_are_rejected_with_clear_errors() {
    let base = reference_files("good", 1);
    for (defect, needle) in [
        ("missing", "missing input event_mask"),
        (
            "dtype",
            "input event_kind has type Int32, the contract says I64",
        ),
        ("rank", "input event_kind has rank 3, the contract says 2"),
        ("extra", "unexpected input coupon_history"),
    ] {
        let files = ModelFiles {
            onnx: defective(defect),
            ..base.clone()
        };
        let err = rejection(&files);
        assert!(err.contains(needle), "{defect}: {err}");
        assert!(err.starts_with("model good rejected"), "{err}");
    }
}

#[test]
fn manifest_golden_nan_and_corrupt_files_are_rejected() {
    let base = reference_files("good", 1);

    let mut spec_mismatch = base.clone();
    spec_mismatch.manifest.feature_spec.max_events = 500;
    assert!(rejection(&spec_mismatch).contains("max_events 500"));

    let mut wrong_segments = base.clone();
    wrong_segments.manifest.segments.pop();
    assert!(rejection(&wrong_segments)
        .contains("output segment_probs dimension 1 is 5, the contract says 4"));

    let mut golden = base.clone();
    golden.manifest.golden.outputs.purchase_probability[2] += 0.01;
    let err = rejection(&golden);
    assert!(
        err.contains("purchase_probability[2]") && err.contains("tolerance"),
        "{err}"
    );

    // NaN weights: the model runs but its outputs are not finite.
    let spec = featurizer().spec().clone();
    let nan_onnx = ReferenceModel::new(&spec, 5, 1)
        .with_poisoned_segment_bias()
        .to_onnx("good");
    let files = ModelFiles {
        onnx: nan_onnx,
        ..base.clone()
    };
    let err = rejection(&files);
    assert!(err.contains("NaN"), "{err}");

    let mut truncated = base.clone();
    truncated.onnx.truncate(truncated.onnx.len() / 3);
    let err = load(&truncated).unwrap_err();
    assert!(matches!(err, ScoreError::Load { .. }), "{err}");
    assert!(
        err.to_string().contains("not a loadable ONNX model"),
        "{err}"
    );

    let garbage = ModelFiles {
        onnx: b"\x08\x07not a model at all".to_vec(),
        ..base
    };
    assert!(matches!(
        load(&garbage).unwrap_err(),
        ScoreError::Load { .. }
    ));
}

/// Same file, same inputs: the Python `onnxruntime` package gives the same
/// outputs (`make test` installs it into a venv and sets SEGSTREAM_TEST_PYTHON).
#[test]
fn outputs_match_python_onnxruntime() {
    let python = std::env::var("SEGSTREAM_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("SEGSTREAM_TEST_PYTHON is not set; run `make test` (it installs onnxruntime from PyPI into a venv)")
    });
    let files = reference_files("py-1", 11);
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.onnx");
    std::fs::write(&model_path, &files.onnx).unwrap();
    let g = &files.manifest.golden.inputs;
    let inputs_path = dir.path().join("inputs.json");
    std::fs::write(&inputs_path, serde_json::to_vec(g).unwrap()).unwrap();
    let script = r#"
import json, sys
import numpy as np
import onnxruntime as ort
g = json.load(open(sys.argv[2]))
spec = json.loads(sys.argv[3])
b, n, t = g["batch"], spec["max_events"], spec["text_tokens"]
feeds = {
    "event_kind": np.array(g["event_kind"], dtype=np.int64).reshape(b, n),
    "event_category": np.array(g["event_category"], dtype=np.int64).reshape(b, n),
    "event_numeric": np.array(g["event_numeric"], dtype=np.float32).reshape(b, n, spec["event_numeric_dim"]),
    "event_text": np.array(g["event_text"], dtype=np.int64).reshape(b, n, t),
    "event_mask": np.array(g["event_mask"], dtype=np.float32).reshape(b, n),
    "customer_features": np.array(g["customer_features"], dtype=np.float32).reshape(b, spec["customer_dim"]),
}
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
names = ["segment_probs", "purchase_probability", "churn_probability", "predicted_spend"]
out = sess.run(names, feeds)
print(json.dumps({k: v.reshape(-1).tolist() for k, v in zip(names, out)}))
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&model_path)
        .arg(&inputs_path)
        .arg(serde_json::to_string(&files.manifest.feature_spec).unwrap())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let batch = {
        // Score the same inputs through segstream's session.
        let mut session = segstream::score::new_session(&cfg(), "py-1", &files.onnx)
            .unwrap()
            .0;
        segstream::score::run_session(&mut session, g, &files.manifest.feature_spec, 5).unwrap()
    };
    let mut compared = 0;
    for (name, ours) in [
        ("segment_probs", &batch.segment_probs),
        ("purchase_probability", &batch.purchase_probability),
        ("churn_probability", &batch.churn_probability),
        ("predicted_spend", &batch.predicted_spend),
    ] {
        let theirs: Vec<f64> = serde_json::from_value(py[name].clone()).unwrap();
        assert_eq!(theirs.len(), ours.len(), "{name}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((f64::from(*a) - b).abs() <= 1e-5, "{name}: {a} vs {b}");
            compared += 1;
        }
    }
    assert_eq!(compared, 4 * 5 + 3 * 4);
}

/// While requests stream, models are swapped repeatedly, good and bad ones:
/// no request fails, none is scored by a rejected model, versions only move forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = cfg();
    config.registry = dir.path().to_path_buf();
    config.inference_threads = 2;
    let registry = Registry::new(dir.path());
    let publish = |version: &str, seed: u64, broken: bool| {
        let mut files = reference_files(version, seed);
        if broken {
            files.manifest.golden.outputs.churn_probability[0] += 0.5;
        }
        registry.publish(&files.onnx, &files.manifest).unwrap();
        registry.promote(version).unwrap();
    };
    publish("v001", 1, false);
    let metrics = Metrics::new().unwrap();
    let mut watcher = ModelWatcher::new(&config, limits(), metrics.clone());
    let PollOutcome::Loaded(first) = watcher.poll() else {
        panic!("first model loads")
    };
    let scorer = Arc::new(Scorer::start(&config, *first, metrics.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let scorer = scorer.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let empty = segstream::state::CustomerState::default();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let model = scorer.current();
                let batch = model
                    .featurizer
                    .featurize(&[&empty, &empty, &empty], 1_790_000_000_000)
                    .unwrap();
                let scores = scorer.score(model, batch).await.expect("no request fails");
                if seen.last() != Some(&scores.model_version) {
                    seen.push(scores.model_version.clone());
                }
            }
            seen
        }));
    }
    let mut rejected = Vec::new();
    for (i, broken) in [false, true, false, true, true, false, false, true, false]
        .iter()
        .enumerate()
    {
        let version = format!("v{:03}", i + 2);
        publish(&version, i as u64 + 2, *broken);
        match tokio::task::block_in_place(|| watcher.poll()) {
            PollOutcome::Loaded(m) => {
                assert!(!broken, "{version} should have been rejected");
                scorer.swap(*m);
            }
            PollOutcome::Rejected { version: v, error } => {
                assert!(broken, "{v} rejected: {error}");
                rejected.push(v);
            }
            PollOutcome::Unchanged => panic!("{version} not noticed"),
        }
        assert!(
            matches!(watcher.poll(), PollOutcome::Unchanged),
            "a rejected model is not retried"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let seen = c.await.unwrap();
        assert!(!seen.is_empty());
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "versions move forward only: {seen:?}"
        );
        for v in &seen {
            assert!(
                !rejected.iter().any(|r| r.as_str() == &**v),
                "scored by rejected {v}"
            );
        }
    }
    assert_eq!(&*scorer.current().version, "v010");
    assert_eq!(metrics.model_swaps.get(), 5);
    assert_eq!(
        metrics
            .model_load_failures
            .with_label_values(&["golden"])
            .get(),
        4
    );
}

/// Small batches run on the calling worker when a session is idle, larger
/// ones on the inference threads: both give the model's own scores and
/// both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_large_batches_score_alike() {
    use segstream::score::INLINE_ROWS;
    let files = reference_files("v001", 7);
    let metrics = Metrics::new().unwrap();
    let scorer = Scorer::start(&cfg(), load(&files).unwrap(), metrics.clone());
    let model = scorer.current();
    // Customers with different histories, so that rows differ.
    let mut by_customer = std::collections::BTreeMap::new();
    let history = segstream::generate::history(&segstream::generate::GeneratorConfig {
        seed: 3,
        customers: 80,
        days: 30,
        start_ms: 1_787_000_000_000,
        ..Default::default()
    });
    for e in history {
        by_customer
            .entry(e.customer_id.clone())
            .or_insert_with(segstream::state::CustomerState::default)
            .record(&e, limits());
    }
    let states: Vec<_> = by_customer.into_values().collect();
    assert!(states.len() >= 64);
    let mut scored = 0;
    for rows in [1, INLINE_ROWS, INLINE_ROWS + 1, 64] {
        let refs: Vec<_> = states.iter().take(rows).collect();
        let batch = model
            .featurizer
            .featurize(&refs, 1_790_000_000_000)
            .unwrap();
        let expected = scorer.score_blocking(&batch).unwrap();
        let got = scorer.score(model.clone(), batch).await.unwrap();
        assert_eq!(got.rows, rows);
        assert_eq!(got.outputs, expected.outputs, "{rows} rows");
        scored += rows as u64;
    }
    assert_eq!(metrics.scored_customers.get(), scored);
}

/// Shadow models (issue 39): the watcher loads the versions listed in
/// `SHADOW` with the hot-swap checks, leaves out the live version and a
/// version that fails them (counted, not retried until the list changes),
/// reuses what it loaded, and says nothing when the list is unchanged.
#[test]
fn the_watcher_loads_shadow_models_with_the_hot_swap_checks() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = cfg();
    config.registry = dir.path().to_path_buf();
    let registry = Registry::new(dir.path());
    for (version, seed, broken) in [("v1", 1, false), ("v2", 2, false), ("bad", 3, true)] {
        let mut files = reference_files(version, seed);
        if broken {
            files.manifest.golden.outputs.churn_probability[0] += 0.5;
        }
        registry.publish(&files.onnx, &files.manifest).unwrap();
    }
    registry.promote("v1").unwrap();
    let metrics = Metrics::new().unwrap();
    let mut watcher = ModelWatcher::new(&config, limits(), metrics.clone());
    assert!(matches!(watcher.poll(), PollOutcome::Loaded(_)));
    let none = watcher
        .poll_shadows()
        .expect("the first poll says what it found");
    assert!(none.is_empty());
    assert!(watcher.poll_shadows().is_none(), "unchanged");
    registry.add_shadow("v2").unwrap();
    registry.add_shadow("bad").unwrap();
    let shadows = watcher.poll_shadows().expect("the list changed");
    let versions: Vec<&str> = shadows.iter().map(|m| &*m.version).collect();
    assert_eq!(versions, ["v2"], "the broken one is left out");
    let failures = |reason: &str| {
        metrics
            .model_load_failures
            .with_label_values(&[reason])
            .get()
    };
    assert_eq!(failures("golden"), 1);
    assert!(
        watcher.poll_shadows().is_none(),
        "a rejected shadow is not retried"
    );
    assert_eq!(failures("golden"), 1);
    // Taking the broken one out: the model loaded before is reused.
    registry.remove_shadow("bad").unwrap();
    let kept = watcher.poll_shadows().expect("the list changed");
    assert!(Arc::ptr_eq(&kept[0], &shadows[0]), "reused, not reloaded");
    // Promoting the shadow makes it live, and it leaves the shadows.
    registry.promote("v2").unwrap();
    assert!(matches!(watcher.poll(), PollOutcome::Loaded(_)));
    assert!(registry.shadows().unwrap().is_empty());
    assert!(watcher.poll_shadows().expect("the list changed").is_empty());
    // A shadow list naming the live version (written by hand) leaves it out.
    std::fs::write(dir.path().join("SHADOW"), "v2\nv1\n").unwrap();
    let listed = watcher.poll_shadows().expect("the list changed");
    let versions: Vec<&str> = listed.iter().map(|m| &*m.version).collect();
    assert_eq!(versions, ["v1"]);
    // The scorer hands them out.
    let scorer = Scorer::start(
        &config,
        load(&reference_files("v9", 9)).unwrap(),
        metrics.clone(),
    );
    scorer.set_shadows(listed);
    assert_eq!(scorer.shadows().len(), 1);
    assert_eq!(metrics.shadow_models.get(), 1);
    scorer.shutdown();
}
