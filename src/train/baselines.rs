//! The baselines a trained model is judged against, on the same validation
//! examples: the recency/frequency/monetary rule model (`model::rules`, the
//! model a fresh deployment starts with) and a logistic regression on the
//! customer (window aggregate) features, with one head per model output.

use super::examples::{class_weights, ExampleSet};
use super::net::{Calibration, LinearStart};
use crate::features::{FeatureSpec, CUSTOMER_DIM};
use crate::model::reference::{sigmoid, softmax, Inputs, Outputs};
use crate::model::Segment;

/// The rule model's outputs for every example.
pub fn rules(spec: &FeatureSpec, set: &ExampleSet) -> Outputs {
    let cf: Vec<f32> = (0..set.len())
        .flat_map(|i| set.customer_features_of(i).iter().copied())
        .collect();
    crate::model::rules::forward(
        spec,
        Inputs {
            event_kind: &[],
            event_category: &[],
            event_numeric: &[],
            event_text: &[],
            event_mask: &[],
            customer_features: &cf,
        },
    )
}

/// Multinomial + binary logistic regressions and a linear log-spend
/// regression on standardized customer features.
#[derive(Debug, Clone)]
pub struct Logistic {
    mean: Vec<f32>,
    std: Vec<f32>,
    /// [F + 1, K + 3]: segment logits, purchase logit, churn logit, log-spend.
    w: Vec<f32>,
    spend_scale: f32,
}

const OUTS: usize = Segment::COUNT + 3;

impl Logistic {
    /// Fits by full-batch Adam with a little L2, `iterations` steps.
    pub fn fit(set: &ExampleSet, spend_scale: f32, iterations: usize) -> Self {
        let f = CUSTOMER_DIM;
        let (mean, std) = set.feature_moments();
        let mut model = Logistic {
            mean,
            std,
            w: vec![0f32; (f + 1) * OUTS],
            spend_scale,
        };
        let cw = class_weights(set);
        let x: Vec<Vec<f32>> = (0..set.len()).map(|i| model.row(set, i)).collect();
        let (mut m1, mut m2) = (vec![0f32; model.w.len()], vec![0f32; model.w.len()]);
        let (b1, b2, lr, l2) = (0.9f32, 0.999f32, 0.05f32, 1e-4f32);
        // Sampling weights (1 / keep rate) times class weights.
        let w_total: f32 = set
            .labels
            .iter()
            .zip(&set.weight)
            .map(|(l, sw)| cw[l.segment.index()] * sw)
            .sum();
        let sw_total: f32 = set.weight.iter().sum::<f32>().max(1e-6);
        for step in 1..=iterations {
            let mut grad = vec![0f32; model.w.len()];
            for (i, xi) in x.iter().enumerate() {
                let z = model.logits(xi);
                let l = set.labels[i];
                let mut dz = [0f32; OUTS];
                // Softmax cross-entropy, class-weighted.
                let probs = softmax(&z[..Segment::COUNT]);
                let swi = set.weight[i];
                let cwi = cw[l.segment.index()] * swi / w_total.max(1e-6);
                // This example's share of the (sampling-weighted) mean.
                let share = swi / sw_total;
                for k in 0..Segment::COUNT {
                    let y = f32::from(u8::from(l.segment.index() == k));
                    dz[k] = (probs[k] - y) * cwi;
                }
                dz[Segment::COUNT] =
                    (sigmoid(z[Segment::COUNT]) - f32::from(u8::from(l.purchased))) * share;
                dz[Segment::COUNT + 1] =
                    (sigmoid(z[Segment::COUNT + 1]) - f32::from(u8::from(l.churned))) * share;
                let y_spend = (l.spend_minor.max(0) as f32).ln_1p() / spend_scale;
                dz[Segment::COUNT + 2] = 2.0 * (z[Segment::COUNT + 2] - y_spend) * share;
                for (j, xv) in xi.iter().enumerate() {
                    for (o, d) in dz.iter().enumerate() {
                        grad[j * OUTS + o] += xv * d;
                    }
                }
            }
            for (k, g) in grad.iter_mut().enumerate() {
                *g += l2 * model.w[k];
                m1[k] = b1 * m1[k] + (1.0 - b1) * *g;
                m2[k] = b2 * m2[k] + (1.0 - b2) * *g * *g;
                let mh = m1[k] / (1.0 - b1.powi(step as i32));
                let vh = m2[k] / (1.0 - b2.powi(step as i32));
                model.w[k] -= lr * mh / (vh.sqrt() + 1e-8);
            }
        }
        model
    }

    /// The standardization: mean and 1 / std per customer feature.
    pub fn standardization(&self) -> (Vec<f32>, Vec<f32>) {
        (
            self.mean.clone(),
            self.std.iter().map(|s| 1.0 / s).collect(),
        )
    }

    /// The fitted model as plain numbers, to warm-start the network with.
    pub fn linear_start(&self) -> LinearStart {
        let (mean, inv_std) = self.standardization();
        LinearStart {
            mean,
            inv_std,
            weights: self.w.clone(),
            outputs: OUTS,
        }
    }

    /// Weight of standardized feature `j` (`j == F`: the bias) for output
    /// `o`: segments `0..K`, then purchase, churn and log-spend logits.
    pub fn weight(&self, j: usize, o: usize) -> f32 {
        self.w[j * OUTS + o]
    }

    /// Standardized features of example `i`, with a trailing 1 (bias).
    fn row(&self, set: &ExampleSet, i: usize) -> Vec<f32> {
        let mut x: Vec<f32> = set
            .customer_features_of(i)
            .iter()
            .enumerate()
            .map(|(j, v)| (v - self.mean[j]) / self.std[j])
            .collect();
        x.push(1.0);
        x
    }

    fn logits(&self, x: &[f32]) -> [f32; OUTS] {
        let mut z = [0f32; OUTS];
        for (j, xv) in x.iter().enumerate() {
            for (o, zo) in z.iter_mut().enumerate() {
                *zo += xv * self.w[j * OUTS + o];
            }
        }
        z
    }

    /// Outputs for every example of `set` (uncalibrated).
    pub fn predict(&self, set: &ExampleSet) -> Outputs {
        self.predict_with(set, &Calibration::default(), false)
    }

    /// Outputs for every example of `set` calibrated by `c`, as the
    /// exported graph computes them ([`super::export::logistic_to_onnx`]);
    /// with `explain`, also the explanation output: per segment, each
    /// standardized feature times its weight, 0 for the sequence (this
    /// model has none) and the bias, centered over the segments, so a row
    /// sums to the centered segment logit.
    pub fn predict_with(&self, set: &ExampleSet, c: &Calibration, explain: bool) -> Outputs {
        let k = Segment::COUNT;
        let centered = self.centered_segment_weights();
        let mut out = Outputs::default();
        for i in 0..set.len() {
            let x = self.row(set, i);
            let z = self.logits(&x);
            out.segment_probs.extend(softmax(&z[..k]));
            let (pa, pb) = c.purchase;
            out.purchase_probability.push(sigmoid(pa * z[k] + pb));
            let (ca, cb) = c.churn;
            out.churn_probability.push(sigmoid(ca * z[k + 1] + cb));
            out.predicted_spend
                .push((((z[k + 2] * self.spend_scale).exp() - 1.0) * c.smear).max(0.0));
            if explain {
                let f = CUSTOMER_DIM;
                for s in 0..k {
                    for (j, xv) in x.iter().take(f).enumerate() {
                        out.segment_contributions.push(xv * centered[j * k + s]);
                    }
                    out.segment_contributions.push(0.0);
                    out.segment_contributions.push(centered[f * k + s]);
                }
            }
        }
        out
    }

    /// The segment weights `[F + 1, K]` (the last row the biases), each
    /// row centered over the segments (softmax does not see a shift).
    pub fn centered_segment_weights(&self) -> Vec<f32> {
        let k = Segment::COUNT;
        let mut out = Vec::with_capacity((CUSTOMER_DIM + 1) * k);
        for j in 0..=CUSTOMER_DIM {
            let row: Vec<f32> = (0..k).map(|s| self.weight(j, s)).collect();
            let mean = row.iter().sum::<f32>() / k as f32;
            out.extend(row.iter().map(|w| w - mean));
        }
        out
    }

    /// The scale of the log-spend output.
    pub fn spend_scale(&self) -> f32 {
        self.spend_scale
    }

    /// Trainable numbers.
    pub fn parameter_count(&self) -> usize {
        self.w.len()
    }
}
