//! The reference model: a small, deterministic (seeded, untrained) network
//! that honours the model contract exactly. It is the stand-in model for
//! smoke tests of a deployment and for the scorer's tests and benchmark, and
//! its plain-Rust forward pass ([`ReferenceModel::forward`]) is an independent
//! check of the ONNX writer against ONNX Runtime.
//!
//! Per event: kind, category and text-token embeddings plus a projection of
//! the numeric features; a masked mean over events; plus a ReLU projection of
//! the customer features; then a softmax segment head and sigmoid/softplus
//! heads for the auxiliary outputs.

use super::onnx::{Attr, GraphBuilder};
use crate::features::{FeatureSpec, CUSTOMER_DIM, EVENT_NUMERIC_DIM};
use crate::rng::Rng;

/// Weights of the reference model.
#[derive(Debug, Clone)]
pub struct ReferenceModel {
    spec: FeatureSpec,
    segments: usize,
    hidden: usize,
    kind_emb: Vec<f32>,
    cat_emb: Vec<f32>,
    text_emb: Vec<f32>,
    w_num: Vec<f32>,
    w_cust: Vec<f32>,
    b_cust: Vec<f32>,
    w_seg: Vec<f32>,
    b_seg: Vec<f32>,
    w_heads: [Vec<f32>; 3],
}

/// Uniform weights in [-scale, scale) from the crate's generator.
fn uniform(r: &mut Rng, scale: f32) -> f32 {
    (r.unit_f32() * 2.0 - 1.0) * scale
}

fn uniform_vec(r: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| uniform(r, scale)).collect()
}

/// The model inputs in row-major form, as the featurizer's tensors hold them.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// [B, N]
    pub event_kind: &'a [i64],
    /// [B, N]
    pub event_category: &'a [i64],
    /// [B, N, E]
    pub event_numeric: &'a [f32],
    /// [B, N, T]
    pub event_text: &'a [i64],
    /// [B, N]
    pub event_mask: &'a [f32],
    /// [B, F]
    pub customer_features: &'a [f32],
}

/// The four outputs, row-major.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// [B, K]
    pub segment_probs: Vec<f32>,
    /// `[B]`
    pub purchase_probability: Vec<f32>,
    /// `[B]`
    pub churn_probability: Vec<f32>,
    /// `[B]`
    pub predicted_spend: Vec<f32>,
    /// [B, K, F + 2], the optional explanation output
    /// ([`super::SEGMENT_CONTRIBUTIONS`]); empty when the model has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segment_contributions: Vec<f32>,
}

impl Outputs {
    /// The outputs by name, in contract order; the explanation output last,
    /// when there is one.
    pub fn named(&self) -> Vec<(&'static str, &[f32])> {
        let mut v: Vec<(&'static str, &[f32])> = vec![
            ("segment_probs", &self.segment_probs),
            ("purchase_probability", &self.purchase_probability),
            ("churn_probability", &self.churn_probability),
            ("predicted_spend", &self.predicted_spend),
        ];
        if !self.segment_contributions.is_empty() {
            v.push((super::SEGMENT_CONTRIBUTIONS, &self.segment_contributions));
        }
        v
    }

    /// Appends the rows of `more` (batches scored in chunks).
    pub fn append(&mut self, more: Outputs) {
        self.segment_probs.extend(more.segment_probs);
        self.purchase_probability.extend(more.purchase_probability);
        self.churn_probability.extend(more.churn_probability);
        self.predicted_spend.extend(more.predicted_spend);
        self.segment_contributions
            .extend(more.segment_contributions);
    }
}

/// The logistic function.
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Softmax of `logits` (max-shifted).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    exp.into_iter().map(|v| v / total).collect()
}

impl ReferenceModel {
    /// Seeded weights for `spec` with `segments` segments.
    pub fn new(spec: &FeatureSpec, segments: usize, seed: u64) -> Self {
        let h = 16;
        let mut r = Rng::new(seed);
        ReferenceModel {
            spec: spec.clone(),
            segments,
            hidden: h,
            kind_emb: uniform_vec(&mut r, spec.kind_vocab * h, 0.5),
            cat_emb: uniform_vec(&mut r, spec.category_buckets as usize * h, 0.5),
            text_emb: uniform_vec(&mut r, spec.text_buckets as usize * h, 0.5),
            w_num: uniform_vec(&mut r, EVENT_NUMERIC_DIM * h, 0.5),
            w_cust: uniform_vec(&mut r, CUSTOMER_DIM * h, 0.5),
            b_cust: uniform_vec(&mut r, h, 0.1),
            w_seg: uniform_vec(&mut r, h * segments, 0.8),
            b_seg: uniform_vec(&mut r, segments, 0.2),
            w_heads: [
                uniform_vec(&mut r, h, 0.8),
                uniform_vec(&mut r, h, 0.8),
                uniform_vec(&mut r, h, 0.8),
            ],
        }
    }

    /// The same model with NaN segment biases: it loads and runs but gives
    /// non-finite outputs (for tests of the finiteness check).
    pub fn with_poisoned_segment_bias(mut self) -> Self {
        self.b_seg.iter_mut().for_each(|b| *b = f32::NAN);
        self
    }

    /// The ONNX file.
    pub fn to_onnx(&self, version: &str) -> Vec<u8> {
        let s = &self.spec;
        let (e, f, h, k) = (
            EVENT_NUMERIC_DIM as i64,
            CUSTOMER_DIM as i64,
            self.hidden as i64,
            self.segments as i64,
        );
        let mut g = GraphBuilder::new("segstream_reference");
        let [kind, cat, num, text, mask, cust] = g.contract_inputs(s);

        let kind_w = g.init_f32("kind_emb", &[s.kind_vocab as i64, h], &self.kind_emb);
        let cat_w = g.init_f32(
            "cat_emb",
            &[i64::from(s.category_buckets), h],
            &self.cat_emb,
        );
        let text_w = g.init_f32("text_emb", &[i64::from(s.text_buckets), h], &self.text_emb);
        let num_w = g.init_f32("w_num", &[e, h], &self.w_num);
        let cust_w = g.init_f32("w_cust", &[f, h], &self.w_cust);
        let cust_b = g.init_f32("b_cust", &[h], &self.b_cust);
        let seg_w = g.init_f32("w_seg", &[h, k], &self.w_seg);
        let seg_b = g.init_f32("b_seg", &[k], &self.b_seg);
        let axis1 = g.init_i64("axis1", &[1], &[1]);
        let axis2 = g.init_i64("axis2", &[1], &[2]);
        let eps = g.init_f32("eps", &[], &[1e-6]);

        let ke = g.op("Gather", &[&kind_w, &kind], &[]);
        let ce = g.op("Gather", &[&cat_w, &cat], &[]);
        let ne = g.op("MatMul", &[&num, &num_w], &[]);
        let te = g.op("Gather", &[&text_w, &text], &[]);
        let te = g.op(
            "ReduceMean",
            &[&te],
            &[Attr::Ints("axes", vec![2]), Attr::Int("keepdims", 0)],
        );
        let x = g.op("Add", &[&ke, &ce], &[]);
        let x = g.op("Add", &[&x, &ne], &[]);
        let x = g.op("Add", &[&x, &te], &[]);
        let m3 = g.op("Unsqueeze", &[&mask, &axis2], &[]);
        let x = g.op("Mul", &[&x, &m3], &[]);
        let sum = g.op("ReduceSum", &[&x, &axis1], &[Attr::Int("keepdims", 0)]);
        let count = g.op("ReduceSum", &[&mask, &axis1], &[Attr::Int("keepdims", 1)]);
        let count = g.op("Add", &[&count, &eps], &[]);
        let pooled = g.op("Div", &[&sum, &count], &[]);
        let c = g.op("MatMul", &[&cust, &cust_w], &[]);
        let c = g.op("Add", &[&c, &cust_b], &[]);
        let c = g.op("Relu", &[&c], &[]);
        let z = g.op("Add", &[&pooled, &c], &[]);
        let logits = g.op("MatMul", &[&z, &seg_w], &[]);
        let logits = g.op("Add", &[&logits, &seg_b], &[]);
        g.op_into(
            "Softmax",
            &[&logits],
            "segment_probs",
            &[Attr::Int("axis", 1)],
        );
        for (i, (name, act)) in [
            ("purchase_probability", "Sigmoid"),
            ("churn_probability", "Sigmoid"),
            ("predicted_spend", "Softplus"),
        ]
        .into_iter()
        .enumerate()
        {
            let w = g.init_f32(&format!("w_{name}"), &[h, 1], &self.w_heads[i]);
            let y = g.op("MatMul", &[&z, &w], &[]);
            let y = g.op("ReduceSum", &[&y, &axis1], &[Attr::Int("keepdims", 0)]);
            g.op_into(act, &[&y], name, &[]);
        }
        g.contract_outputs(self.segments);
        g.finish(
            "segstream reference model (seeded, untrained): for smoke tests and benchmarks",
            &[("segstream.version", version)],
        )
    }

    /// The same computation in plain Rust (f32, same operation order where it matters).
    // Index loops mirror the tensor algebra of the graph one to one.
    #[allow(clippy::needless_range_loop)]
    pub fn forward(&self, x: Inputs<'_>) -> Outputs {
        let s = &self.spec;
        let (n, e, t, f, h, k) = (
            s.max_events,
            EVENT_NUMERIC_DIM,
            s.text_tokens,
            CUSTOMER_DIM,
            self.hidden,
            self.segments,
        );
        let b = x.event_mask.len() / n;
        let mut out = Outputs::default();
        for row in 0..b {
            let mut sum = vec![0f32; h];
            let mut count = 0f32;
            for i in 0..n {
                let ev = row * n + i;
                let m = x.event_mask[ev];
                count += m;
                let kind = x.event_kind[ev] as usize;
                let cat = x.event_category[ev] as usize;
                for j in 0..h {
                    let mut v = self.kind_emb[kind * h + j] + self.cat_emb[cat * h + j];
                    let mut p = 0f32;
                    for q in 0..e {
                        p += x.event_numeric[ev * e + q] * self.w_num[q * h + j];
                    }
                    v += p;
                    if t > 0 {
                        let mut tm = 0f32;
                        for q in 0..t {
                            let tok = x.event_text[ev * t + q] as usize;
                            tm += self.text_emb[tok * h + j];
                        }
                        v += tm / t as f32;
                    }
                    sum[j] += v * m;
                }
            }
            let count = count + 1e-6;
            let mut z = vec![0f32; h];
            for j in 0..h {
                let mut c = 0f32;
                for q in 0..f {
                    c += x.customer_features[row * f + q] * self.w_cust[q * h + j];
                }
                z[j] = sum[j] / count + (c + self.b_cust[j]).max(0.0);
            }
            let logits: Vec<f32> = (0..k)
                .map(|c| (0..h).map(|j| z[j] * self.w_seg[j * k + c]).sum::<f32>() + self.b_seg[c])
                .collect();
            out.segment_probs.extend(softmax(&logits));
            let head = |w: &[f32]| (0..h).map(|j| z[j] * w[j]).sum::<f32>();
            out.purchase_probability
                .push(sigmoid(head(&self.w_heads[0])));
            out.churn_probability.push(sigmoid(head(&self.w_heads[1])));
            out.predicted_spend
                .push(head(&self.w_heads[2]).exp().ln_1p());
        }
        out
    }
}

/// Golden inputs: a few customers with varied histories (every event kind,
/// reviews with text, an empty customer), featurized by `featurizer`.
pub fn golden_inputs(
    featurizer: &crate::features::Featurizer,
) -> Result<super::GoldenInputs, crate::features::FeatureError> {
    use crate::event::{Browse, BrowseAction, Event, LineItem, Payload, Purchase, Review};
    use crate::state::{CustomerState, StateLimits};
    let t0 = 1_790_000_000_000i64;
    let spec = featurizer.spec();
    let limits = StateLimits {
        max_events: spec.max_events,
        text_tokens: spec.text_tokens,
    };
    let event = |c: usize, i: usize| {
        let t = t0 + (i as i64) * 5_400_000 + (c as i64) * 60_000;
        let category = ["shoes", "socks", "bags", ""][(c + i) % 4].to_string();
        let payload = match (c + i) % 5 {
            0 | 1 => Payload::Browse(Browse {
                product_id: format!("sku-{i}"),
                category,
                session_id: String::new(),
                action: if i % 2 == 0 {
                    BrowseAction::View
                } else {
                    BrowseAction::CartAdd
                },
                dwell_ms: (i as i64) * 7_000,
                price_minor: 999 + (c as i64) * 100,
            }),
            2 | 3 => Payload::Purchase(Purchase {
                order_id: format!("o-{c}-{i}"),
                items: vec![LineItem {
                    product_id: format!("sku-{i}"),
                    category,
                    quantity: 1,
                    unit_price_minor: 2_500 * (c as i64 + 1),
                }],
                total_minor: 2_500 * (c as i64 + 1),
                currency: "EUR".into(),
            }),
            _ => Payload::Review(Review {
                product_id: format!("sku-{i}"),
                category,
                rating: 1 + ((c + i) % 5) as u8,
                text: "great quality but the delivery was slow and the box was damaged".into(),
            }),
        };
        Event {
            event_id: format!("g-{c}-{i}"),
            customer_id: format!("golden-{c}"),
            event_time_ms: t,
            payload,
        }
    };
    let states: Vec<CustomerState> = [3usize, 20, 0, spec.max_events + 5]
        .iter()
        .enumerate()
        .map(|(c, n)| {
            let mut s = CustomerState::default();
            for i in 0..*n {
                s.record(&event(c, i), limits);
            }
            s
        })
        .collect();
    let refs: Vec<&CustomerState> = states.iter().collect();
    let as_of = t0 + 120 * 5_400_000;
    super::GoldenInputs::from_batch(&featurizer.featurize(&refs, as_of)?)
}

/// A complete reference model: ONNX bytes and a manifest whose golden
/// outputs come from the plain-Rust forward pass (not from ONNX Runtime).
pub fn build(
    featurizer: &crate::features::Featurizer,
    segments: &[String],
    version: &str,
    seed: u64,
) -> Result<(Vec<u8>, super::Manifest), crate::features::FeatureError> {
    let spec = featurizer.spec().clone();
    let model = ReferenceModel::new(&spec, segments.len(), seed);
    let inputs = golden_inputs(featurizer)?;
    let outputs = model.forward(inputs.as_inputs());
    let manifest = super::Manifest {
        format_version: super::MANIFEST_VERSION,
        version: version.to_string(),
        created_at_ms: crate::ingest::now_ms(),
        description: format!("reference model (seeded with {seed}, untrained)"),
        feature_spec: spec,
        segments: segments.to_vec(),
        training_window: None,
        metrics: Default::default(),
        golden: super::Golden {
            tolerance: 1e-4,
            inputs,
            outputs,
        },
        reference: None,
    };
    Ok((model.to_onnx(version), manifest))
}
