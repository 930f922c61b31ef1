//! The recency/frequency/monetary rule model: fixed linear scores over the
//! customer features, exported through the same ONNX contract as a trained
//! model. It is the baseline a trained model must beat, a sensible first
//! model for a fresh deployment, and, being deterministic and readable, the
//! model the end-to-end tests reason about (e.g. a customer who goes silent
//! drifts to `at_risk`).
//!
//! Scores (before the softmax), with features as `features` normalizes them:
//! - `high_value`: 12 · (30-day spend − 0.55), about €70 of spend at the threshold
//! - `active_buyer`: 12 · (30-day purchases − 0.05), i.e. at least one purchase
//! - `browser`: 12 · (7-day browse events − 0.05) − 6 · (30-day purchases)
//! - `at_risk`: 12 · (days since last event − 0.1) + 3 · (purchased ever − 0.5)
//! - `dormant`: 12 · (days since last event − 0.1) − 3 · (purchased ever − 0.5)
//!
//! Heads: purchase probability from 30-day purchases, churn probability from
//! silence, and as predicted spend the last 30 days' spend.
//!
//! where "days since last event" crosses 0.1 after about 1.3 days of silence.

use super::onnx::{Attr, GraphBuilder};
use super::reference::{sigmoid, softmax, Inputs, Outputs};
use super::Segment;
use crate::features::{FeatureSpec, CUSTOMER_DIM};
use crate::state::WINDOW_DAYS;

const PER_WINDOW: usize = 7;

/// Indexes into `customer_features`.
fn idx(window: usize, field: usize) -> usize {
    window * PER_WINDOW + field
}

/// Weights [F, 5] and bias [5] of the five default segments, in
/// [`Segment`] order.
fn weights() -> (Vec<f32>, Vec<f32>) {
    let base = WINDOW_DAYS.len() * PER_WINDOW;
    let (days_since_purchase, days_since_event) = (base, base + 1);
    let w30 = 2; // windows: 1, 7, 30, 90 days
    let w7 = 1;
    const K: usize = Segment::COUNT;
    let mut w = vec![0f32; CUSTOMER_DIM * K];
    let mut b = vec![0f32; K];
    let mut set = |f: usize, s: Segment, v: f32| w[f * K + s.index()] = v;
    set(idx(w30, 4), Segment::HighValue, 12.0);
    b[Segment::HighValue.index()] = -12.0 * 0.55;
    set(idx(w30, 2), Segment::ActiveBuyer, 12.0);
    b[Segment::ActiveBuyer.index()] = -12.0 * 0.05;
    set(idx(w7, 0), Segment::Browser, 12.0);
    set(idx(w30, 2), Segment::Browser, -6.0);
    b[Segment::Browser.index()] = -12.0 * 0.05;
    // at_risk / dormant: silence, split by whether the customer ever bought.
    // days_since_purchase is -1 when never purchased, >= 0 otherwise.
    set(days_since_event, Segment::AtRisk, 12.0);
    set(days_since_purchase, Segment::AtRisk, 3.0);
    b[Segment::AtRisk.index()] = -12.0 * 0.1 + 3.0 * 0.5;
    set(days_since_event, Segment::Dormant, 12.0);
    set(days_since_purchase, Segment::Dormant, -3.0);
    b[Segment::Dormant.index()] = -12.0 * 0.1 - 3.0 * 0.5;
    (w, b)
}

/// The rule model for `spec` (five default segments).
pub fn to_onnx(spec: &FeatureSpec, version: &str) -> Vec<u8> {
    let f = CUSTOMER_DIM as i64;
    let mut g = GraphBuilder::new("segstream_rfm_rules");
    // The sequence inputs are part of the contract; the rules do not use them.
    let [_, _, _, _, _, cust] = g.contract_inputs(spec);
    let (w, bias) = weights();
    let w = g.init_f32("w_rules", &[f, 5], &w);
    let bias = g.init_f32("b_rules", &[5], &bias);
    let logits = g.op("MatMul", &[&cust, &w], &[]);
    let logits = g.op("Add", &[&logits, &bias], &[]);
    g.op_into(
        "Softmax",
        &[&logits],
        "segment_probs",
        &[Attr::Int("axis", 1)],
    );
    // Heads: purchase probability from recent purchases, churn from
    // silence, and as predicted spend the last 30 days' spend in minor units
    // (exp of the log-normalized feature, minus one).
    let base = WINDOW_DAYS.len() * PER_WINDOW;
    let axis = g.init_i64("axis1", &[1], &[1]);
    let spend_scale = spec.normalization.spend_log_scale;
    let one = g.init_f32("one", &[], &[1.0]);
    for (name, feature, scale, shift, act) in [
        (
            "purchase_probability",
            idx(2, 2),
            12.0f32,
            -0.6f32,
            "Sigmoid",
        ),
        ("churn_probability", base + 1, 12.0, -1.2, "Sigmoid"),
        ("spend_exp", idx(2, 4), spend_scale, 0.0, "Exp"),
    ] {
        let mut col = vec![0f32; CUSTOMER_DIM];
        col[feature] = scale;
        let wv = g.init_f32(&format!("w_{name}"), &[f, 1], &col);
        let sv = g.init_f32(&format!("s_{name}"), &[], &[shift]);
        let y = g.op("MatMul", &[&cust, &wv], &[]);
        let y = g.op("ReduceSum", &[&y, &axis], &[Attr::Int("keepdims", 0)]);
        let y = g.op("Add", &[&y, &sv], &[]);
        g.op_into(act, &[&y], name, &[]);
    }
    g.op_into("Sub", &["spend_exp", &one], "predicted_spend", &[]);
    g.contract_outputs(5);
    g.finish(
        "segstream recency/frequency/monetary rule model",
        &[("segstream.version", version)],
    )
}

/// The same scores in plain Rust (golden outputs).
pub fn forward(spec: &FeatureSpec, x: Inputs<'_>) -> Outputs {
    let f = CUSTOMER_DIM;
    let rows = x.customer_features.len() / f;
    let (w, b) = weights();
    let base = WINDOW_DAYS.len() * PER_WINDOW;
    let mut out = Outputs::default();
    for r in 0..rows {
        let c = &x.customer_features[r * f..(r + 1) * f];
        let logits: Vec<f32> = (0..5)
            .map(|k| (0..f).map(|i| c[i] * w[i * 5 + k]).sum::<f32>() + b[k])
            .collect();
        out.segment_probs.extend(softmax(&logits));
        out.purchase_probability
            .push(sigmoid(c[idx(2, 2)] * 12.0 - 0.6));
        out.churn_probability
            .push(sigmoid(c[base + 1] * 12.0 - 1.2));
        out.predicted_spend
            .push((c[idx(2, 4)] * spec.normalization.spend_log_scale).exp() - 1.0);
    }
    out
}

/// A complete rule model: ONNX bytes and manifest (golden outputs from [`forward`]).
pub fn build(
    featurizer: &crate::features::Featurizer,
    version: &str,
) -> Result<(Vec<u8>, super::Manifest), crate::features::FeatureError> {
    let spec = featurizer.spec().clone();
    let inputs = super::reference::golden_inputs(featurizer)?;
    let outputs = forward(&spec, inputs.as_inputs());
    let manifest = super::Manifest {
        format_version: super::MANIFEST_VERSION,
        version: version.to_string(),
        created_at_ms: crate::ingest::now_ms(),
        description: "recency/frequency/monetary rule model".into(),
        feature_spec: spec.clone(),
        segments: Segment::names(),
        training_window: None,
        metrics: Default::default(),
        golden: super::Golden {
            tolerance: 1e-4,
            inputs,
            outputs,
        },
        reference: None,
    };
    Ok((to_onnx(&spec, version), manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Featurizer;
    use crate::model::{GoldenInputs, Segment};
    use crate::state::tests::{buy, ev, view, T0};
    use crate::state::{CustomerState, StateLimits};

    fn segment_of(events: &[crate::event::Event], as_of: i64) -> &'static str {
        let limits = StateLimits::default();
        let f = Featurizer::new(crate::features::FeatureSpec::for_state(limits), limits).unwrap();
        let mut s = CustomerState::default();
        for e in events {
            s.record(e, limits);
        }
        let batch = f.featurize(&[&s], as_of).unwrap();
        let out = forward(
            f.spec(),
            GoldenInputs::from_batch(&batch).unwrap().as_inputs(),
        );
        Segment::ALL[crate::decide::argmax(&out.segment_probs).unwrap()].name()
    }

    #[test]
    fn rules_follow_recency_frequency_and_money() {
        let day = crate::units::DAY_MS;
        let bought = [ev("c", "1", T0, buy("shoes", 2_500))];
        assert_eq!(segment_of(&bought, T0 + 3_600_000), "active_buyer");
        assert_eq!(segment_of(&bought, T0 + 10 * day), "at_risk");
        let big = [ev("c", "1", T0, buy("watches", 90_000))];
        assert_eq!(segment_of(&big, T0 + 3_600_000), "high_value");
        let looked = [
            ev("c", "1", T0, view("shoes", 100, 5_000)),
            ev("c", "2", T0 + 1, view("bags", 100, 5_000)),
        ];
        assert_eq!(segment_of(&looked, T0 + 3_600_000), "browser");
        assert_eq!(segment_of(&looked, T0 + 10 * day), "dormant");
    }
}
