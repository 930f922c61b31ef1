//! Unit tests of the training pieces that need no ONNX Runtime.

use candle_core::Device;

use super::examples::{self, ExampleSet, LabelRules, Sampling};
use super::net::{Arch, Transformer};
use super::{featurizer, fit};
use crate::config::{Config, TrainConfig};
use crate::event::Event;
use crate::state::tests::{buy, ev, rate, view};

const DAY: i64 = 86_400_000;
const T0: i64 = 1_780_000_000_000 / DAY * DAY;

/// Customers with views, purchases and reviews every few days.
pub(crate) fn history(customers: usize, days: i64) -> Vec<Event> {
    let mut out = Vec::new();
    for c in 0..customers {
        let id = format!("c{c}");
        for d in 0..days {
            if (d + c as i64) % 3 != 0 {
                continue;
            }
            let t = T0 + d * DAY + (c as i64) * 60_000;
            let p = match (d + c as i64) % 4 {
                0 => buy("shoes", 1_000 + 700 * c as i64),
                1 => rate("bags", 1 + (c % 5) as u8, "great quality but slow delivery"),
                _ => view("bags", 30_000, 2_000),
            };
            out.push(ev(&id, &format!("{c}-{d}"), t, p));
        }
    }
    out
}

pub(crate) fn small_config() -> Config {
    Config {
        train: TrainConfig {
            d_model: 16,
            heads: 2,
            layers: 2,
            ffn_dim: 24,
            batch_size: 16,
            max_epochs: 2,
            ..TrainConfig::default()
        },
        ..Config::default()
    }
}

pub(crate) fn small_examples(config: &Config) -> ExampleSet {
    small_examples_with_report(config).0
}

pub(crate) fn small_examples_with_report(config: &Config) -> (ExampleSet, examples::ReplayReport) {
    let f = featurizer(config).unwrap();
    examples::build(
        history(12, 150),
        &f,
        config.state.limits().state,
        LabelRules::from_config(&config.train),
        Sampling::from_config(&config.train),
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn every_parameter_receives_a_gradient() {
    let config = small_config();
    let set = small_examples(&config);
    let f = featurizer(&config).unwrap();
    let net = Transformer::new(Arch::new(f.spec(), &config.train, 5), 3, &Device::Cpu).unwrap();
    let idx: Vec<usize> = (0..set.len().min(64)).collect();
    let batch = set.batch(&idx, None);
    let weights = super::examples::class_weights(&set);
    let scale = f.spec().normalization.spend_log_scale;
    let mut rng = super::rng(1);
    let loss = fit::loss(
        &net,
        &set,
        &idx,
        &batch,
        &weights,
        scale,
        &Device::Cpu,
        Some((&mut rng, 0.1)),
    )
    .unwrap();
    let grads = loss.backward().unwrap();
    let mut missing = Vec::new();
    for (name, var) in net.params() {
        match grads.get(var.as_tensor()) {
            None => missing.push(format!("{name} (no gradient)")),
            Some(g) => {
                let total = g
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                if !(total > 0.0 && total.is_finite()) {
                    missing.push(format!("{name} (gradient sum {total})"));
                }
            }
        }
    }
    assert!(net.params().len() >= 30, "{}", net.params().len());
    assert!(
        missing.is_empty(),
        "parameters without a gradient: {missing:?}"
    );
}

#[test]
fn padding_to_n_gives_the_same_outputs_as_padding_to_the_longest_row() {
    let config = small_config();
    let set = small_examples(&config);
    let f = featurizer(&config).unwrap();
    let net = Transformer::new(Arch::new(f.spec(), &config.train, 5), 5, &Device::Cpu).unwrap();
    let scale = f.spec().normalization.spend_log_scale;
    let short = fit::predict(&net, &set, scale, None).unwrap();
    let full = fit::predict(&net, &set, scale, Some(f.spec().max_events)).unwrap();
    let (diff, what) = crate::score::max_difference(&short, &full);
    assert!(diff < 1e-5, "{what}: {diff}");
}

#[test]
fn training_lowers_the_loss_and_keeps_the_best_epoch() {
    let mut config = small_config();
    config.train.max_epochs = 4;
    config.train.patience = 4;
    config.train.validation_fraction = 0.25;
    let (set, report) = small_examples_with_report(&config);
    let (train, val) = examples::split_by_time(&set, report.validation_from_ms, 30 * DAY);
    let f = featurizer(&config).unwrap();
    let net = Transformer::new(Arch::new(f.spec(), &config.train, 5), 9, &Device::Cpu).unwrap();
    let scale = f.spec().normalization.spend_log_scale;
    let report = super::Progress::silent(|p| {
        fit::fit(&net, &train, &val, &config.train, scale, &Device::Cpu, p)
    })
    .unwrap();
    assert_eq!(report.epochs.len(), 4);
    assert!(
        report.epochs[3].train_loss < report.epochs[0].train_loss,
        "{:?}",
        report.epochs
    );
    let best = report
        .epochs
        .iter()
        .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss))
        .unwrap();
    assert_eq!(report.best_epoch, best.epoch);
}

/// Platt scaling recovers a known distortion of the logits: outcomes drawn
/// with p = sigmoid(2·z − 1) from logits z are calibrated to a ≈ 2, b ≈ −1.
#[test]
fn platt_scaling_recovers_a_known_distortion() {
    let mut rng = super::rng(3);
    let (mut z, mut y) = (Vec::new(), Vec::new());
    for _ in 0..20_000 {
        let logit = rng.normal_f32() * 1.5;
        let p = 1.0 / (1.0 + (-(2.0 * logit - 1.0)).exp());
        z.push(logit);
        y.push(rng.unit_f32() < p);
    }
    let (a, b) = super::net::Calibration::platt(&z, &y);
    assert!((a - 2.0).abs() < 0.15 && (b + 1.0).abs() < 0.1, "{a} {b}");
    // One class only: identity.
    assert_eq!(
        super::net::Calibration::platt(&z, &vec![true; z.len()]),
        (1.0, 0.0)
    );
}

#[test]
fn the_spend_factor_makes_the_sums_match() {
    let k = super::net::Calibration::smearing(&[10.0, 30.0, 0.0], &[0, 100, 60]);
    assert!((k - 4.0).abs() < 1e-6);
    assert_eq!(super::net::Calibration::smearing(&[0.0], &[0]), 1.0);
}

#[test]
fn explanations_sum_to_the_centered_segment_log_probabilities() {
    let config = small_config();
    let set = small_examples(&config);
    let f = featurizer(&config).unwrap();
    let mut net = Transformer::new(Arch::new(f.spec(), &config.train, 5), 7, &Device::Cpu).unwrap();
    // Weights far from zero, so that every part of the explanation counts.
    let (mean, _) = set.feature_moments();
    net.set_standardization(mean, vec![3.0; crate::features::CUSTOMER_DIM]);
    let scale = f.spec().normalization.spend_log_scale;
    let out = fit::predict_with(&net, &set, scale, None, true).unwrap();
    let (k, w) = (5, crate::model::CONTRIBUTION_WIDTH);
    assert_eq!(out.segment_contributions.len(), set.len() * k * w);
    let mut largest_feature = 0f32;
    for i in 0..set.len() {
        let probs = &out.segment_probs[i * k..(i + 1) * k];
        let mean_ln = probs.iter().map(|p| p.ln()).sum::<f32>() / k as f32;
        for (s, p) in probs.iter().enumerate() {
            let row = &out.segment_contributions[(i * k + s) * w..(i * k + s + 1) * w];
            let total: f32 = row.iter().sum();
            let centered = p.ln() - mean_ln;
            assert!(
                (total - centered).abs() < 1e-3 * centered.abs().max(1.0),
                "example {i} segment {s}: parts sum to {total}, centered log-probability {centered}"
            );
            largest_feature =
                largest_feature.max(row[..w - 2].iter().fold(0f32, |a, v| a.max(v.abs())));
            // The reasons reproduce the same total: listed, sequence, other.
            let (reasons, baseline) = crate::decide::explain(
                &out.segment_contributions[i * k * w..(i + 1) * k * w],
                s,
                None,
                3,
            );
            assert_eq!(reasons.len(), 5, "3 features, sequence, other_features");
            assert_eq!(reasons[4].feature, crate::decide::OTHER_FEATURES);
            let listed: f32 = reasons.iter().map(|r| r.contribution).sum::<f32>() + baseline;
            assert!((listed - total).abs() < 1e-4 * total.abs().max(1.0));
        }
    }
    assert!(largest_feature > 1e-3, "feature contributions are all zero");
}

#[test]
fn the_learning_rate_warms_up_then_decays_to_a_floor() {
    let lr = |step| fit::learning_rate(1.0, step, 1_050);
    assert!((lr(0) - 0.02).abs() < 1e-9);
    assert!((lr(49) - 1.0).abs() < 1e-9);
    assert!((lr(50) - 1.0).abs() < 1e-9);
    assert!((lr(550) - 0.525).abs() < 1e-6, "half way: {}", lr(550));
    assert!((lr(1_050) - 0.05).abs() < 1e-9);
    assert!((lr(5_000) - 0.05).abs() < 1e-9, "beyond the end: the floor");
    let steps: Vec<f64> = (50..1_050).map(lr).collect();
    assert!(
        steps.windows(2).all(|w| w[1] <= w[0]),
        "monotone after warm-up"
    );
}
