//! The Transformer, in candle: an encoder over each customer's recent events
//! joined with the customer (window aggregate) features, and the four heads
//! of the model contract.
//!
//! Per event: kind embedding + hashed-category embedding + a projection of
//! the numeric values + a projection of a sinusoidal encoding of the event's
//! age + the mean of its review-text token embeddings + a position
//! embedding. Then pre-norm encoder layers (multi-head self-attention with
//! padding masked out, ReLU feed-forward), a final layer norm, masked mean
//! pooling, concatenation with the (standardized) customer features, one
//! ReLU layer, and the heads: segment logits, purchase and churn logits, and
//! log-spend. The heads also see the standardized customer features
//! directly (a wide path), so the network can always do what a linear model
//! on the aggregates does, and the sequence encoder adds what it finds.
//!
//! Every op here is a candle primitive with a gradient (layer norm and
//! softmax are written out; no fused op is used), and every op has a plain
//! ONNX counterpart in `export.rs`, which must stay in step with this file.
//! Weights are `[in, out]` matrices, as ONNX `MatMul` wants them.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};

use super::examples::Batch;
use super::Rng;
use crate::features::{FeatureSpec, CUSTOMER_DIM, EVENT_NUMERIC_DIM};

/// Sinusoidal time-encoding frequencies, applied to the normalized log age.
pub const TIME_FREQS: [f32; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Layer-norm epsilon (also written into the ONNX graph).
pub const LN_EPS: f32 = 1e-5;
/// Added to attention scores of padded events.
pub const MASK_NEG: f32 = -1e9;

/// Shapes of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arch {
    /// Model width.
    pub d: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Segments (K).
    pub segments: usize,
    /// Event kinds (ids 0..kinds).
    pub kinds: usize,
    /// Category buckets.
    pub categories: usize,
    /// Text token buckets.
    pub text_buckets: usize,
    /// Events per customer (N).
    pub max_events: usize,
    /// Text tokens per event (T).
    pub text_tokens: usize,
}

impl Arch {
    /// The architecture for a feature spec and trainer settings.
    pub fn new(spec: &FeatureSpec, cfg: &crate::config::TrainConfig, segments: usize) -> Self {
        Arch {
            d: cfg.d_model,
            layers: cfg.layers,
            heads: cfg.heads,
            ffn: cfg.ffn_dim,
            segments,
            kinds: spec.kind_vocab,
            categories: spec.category_buckets as usize,
            text_buckets: spec.text_buckets as usize,
            max_events: spec.max_events,
            text_tokens: spec.text_tokens,
        }
    }
}

/// Raw outputs of the network for a batch.
pub struct Heads {
    /// [B, K] segment logits.
    pub segment_logits: Tensor,
    /// `[B]` purchase logit.
    pub purchase_logit: Tensor,
    /// `[B]` churn logit.
    pub churn_logit: Tensor,
    /// `[B]` predicted ln(1 + spend) / spend_log_scale.
    pub spend: Tensor,
    /// [B, d] the joint representation the heads see (sequence pathway).
    pub joint: Tensor,
    /// [B, F] the standardized customer features (direct path).
    pub customer: Tensor,
}

/// A linear model on the standardized customer features, to start the
/// heads' direct path from ([`Transformer::warm_start`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearStart {
    /// Per-feature mean.
    pub mean: Vec<f32>,
    /// Per-feature 1 / standard deviation.
    pub inv_std: Vec<f32>,
    /// `[F + 1, K + 3]` row-major: one row per standardized feature, then
    /// the biases; columns the segment logits, then the purchase, churn and
    /// log-spend outputs.
    pub weights: Vec<f32>,
    /// Columns of `weights` (K + 3).
    pub outputs: usize,
}

impl LinearStart {
    /// Weight of feature `j` (`j == F`: the bias) for output `o`.
    pub fn weight(&self, j: usize, o: usize) -> f32 {
        self.weights[j * self.outputs + o]
    }
}

/// The network: its architecture and its named parameters.
pub struct Transformer {
    /// Shapes.
    pub arch: Arch,
    params: BTreeMap<String, Var>,
    device: Device,
    /// Customer-feature standardization (fixed, from the training set):
    /// `(x - mean) · inv_std`.
    cust_mean: Vec<f32>,
    cust_inv_std: Vec<f32>,
    /// Post-training calibration of the outputs (identity until fitted).
    pub calibration: Calibration,
}

/// Calibration fitted on held-out examples after training, applied in
/// `fit::predict` and in the exported graph alike: Platt scaling of the
/// purchase and churn logits (`sigmoid(a · logit + b)`), and a ratio
/// factor that turns the log-spend regression (which behaves like a
/// geometric mean, far below the mean for zero-heavy spend) into an
/// expected value whose sum over customers matches: `spend = k · ŷ`.
/// (Duan's smearing, mean((1 + y) / (1 + ŷ)), explodes on zero-heavy spend.)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Platt (a, b) of the purchase logit.
    pub purchase: (f32, f32),
    /// Platt (a, b) of the churn logit.
    pub churn: (f32, f32),
    /// Spend factor k = Σ y / Σ ŷ on the held-out examples.
    pub smear: f32,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            purchase: (1.0, 0.0),
            churn: (1.0, 0.0),
            smear: 1.0,
        }
    }
}

impl Calibration {
    /// Platt scaling fitted by Newton's method on (logit, outcome) pairs,
    /// with the usual smoothed targets (Platt 1999); identity when the
    /// fit does not settle on a positive slope.
    pub fn platt(logits: &[f32], outcomes: &[bool]) -> (f32, f32) {
        let pos = outcomes.iter().filter(|o| **o).count() as f64;
        let neg = outcomes.len() as f64 - pos;
        if pos == 0.0 || neg == 0.0 {
            return (1.0, 0.0);
        }
        let (hi, lo) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
        let (mut a, mut b) = (1.0f64, 0.0f64);
        for _ in 0..50 {
            let (mut g0, mut g1, mut h00, mut h01, mut h11) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (z, o) in logits.iter().zip(outcomes) {
                let z = f64::from(*z);
                let t = if *o { hi } else { lo };
                let p = 1.0 / (1.0 + (-(a * z + b)).exp());
                let w = (p * (1.0 - p)).max(1e-12);
                g0 += (p - t) * z;
                g1 += p - t;
                h00 += w * z * z;
                h01 += w * z;
                h11 += w;
            }
            let det = h00 * h11 - h01 * h01;
            if det.abs() < 1e-12 {
                break;
            }
            let da = (h11 * g0 - h01 * g1) / det;
            let db = (h00 * g1 - h01 * g0) / det;
            a -= da;
            b -= db;
            if da.abs() < 1e-9 && db.abs() < 1e-9 {
                break;
            }
        }
        if a.is_finite() && b.is_finite() && a > 0.0 {
            (a as f32, b as f32)
        } else {
            (1.0, 0.0)
        }
    }

    /// The spend factor: actual over predicted spend, summed.
    pub fn smearing(predicted: &[f32], actual: &[i64]) -> f32 {
        let p: f64 = predicted.iter().map(|p| f64::from(p.max(0.0))).sum();
        let y: f64 = actual.iter().map(|y| (*y).max(0) as f64).sum();
        let k = y / p;
        if k.is_finite() && k > 0.0 {
            k as f32
        } else {
            1.0
        }
    }
}

type CResult<T> = candle_core::Result<T>;

impl Transformer {
    /// A freshly initialized network (deterministic for a seed).
    pub fn new(arch: Arch, seed: u64, device: &Device) -> CResult<Self> {
        let mut rng = super::rng(seed);
        let mut t = Transformer {
            arch: arch.clone(),
            params: BTreeMap::new(),
            device: device.clone(),
            cust_mean: vec![0.0; CUSTOMER_DIM],
            cust_inv_std: vec![1.0; CUSTOMER_DIM],
            calibration: Calibration::default(),
        };
        let (d, f, e) = (arch.d, CUSTOMER_DIM, EVENT_NUMERIC_DIM);
        let mut normal = |t: &mut Transformer, name: &str, shape: &[usize], std: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.normal_f32() * std).collect();
            t.add(name, shape, v)
        };
        let lin = |fan_in: usize| (1.0 / fan_in as f32).sqrt();
        normal(&mut t, "kind_emb", &[arch.kinds, d], 0.1)?;
        normal(&mut t, "category_emb", &[arch.categories, d], 0.1)?;
        normal(&mut t, "text_emb", &[arch.text_buckets, d], 0.1)?;
        normal(&mut t, "pos_emb", &[arch.max_events, d], 0.02)?;
        normal(&mut t, "numeric_w", &[e, d], lin(e))?;
        t.add("numeric_b", &[d], vec![0.0; d])?;
        normal(&mut t, "time_w", &[2 * TIME_FREQS.len(), d], lin(16))?;
        let depth_scale = 1.0 / ((2 * arch.layers) as f32).sqrt();
        for l in 0..arch.layers {
            t.add(&format!("l{l}.ln1_g"), &[d], vec![1.0; d])?;
            t.add(&format!("l{l}.ln1_b"), &[d], vec![0.0; d])?;
            for m in ["q", "k", "v"] {
                normal(&mut t, &format!("l{l}.{m}_w"), &[d, d], lin(d))?;
                t.add(&format!("l{l}.{m}_b"), &[d], vec![0.0; d])?;
            }
            normal(&mut t, &format!("l{l}.o_w"), &[d, d], lin(d) * depth_scale)?;
            t.add(&format!("l{l}.o_b"), &[d], vec![0.0; d])?;
            t.add(&format!("l{l}.ln2_g"), &[d], vec![1.0; d])?;
            t.add(&format!("l{l}.ln2_b"), &[d], vec![0.0; d])?;
            normal(&mut t, &format!("l{l}.ff1_w"), &[d, arch.ffn], lin(d))?;
            t.add(&format!("l{l}.ff1_b"), &[arch.ffn], vec![0.0; arch.ffn])?;
            normal(
                &mut t,
                &format!("l{l}.ff2_w"),
                &[arch.ffn, d],
                lin(arch.ffn) * depth_scale,
            )?;
            t.add(&format!("l{l}.ff2_b"), &[d], vec![0.0; d])?;
        }
        t.add("lnf_g", &[d], vec![1.0; d])?;
        t.add("lnf_b", &[d], vec![0.0; d])?;
        normal(&mut t, "join_w", &[d + f, d], lin(d + f))?;
        t.add("join_b", &[d], vec![0.0; d])?;
        // Heads see the joint representation and, as a direct (wide) path,
        // the standardized customer features.
        normal(&mut t, "seg_w", &[d + f, arch.segments], 0.01)?;
        t.add("seg_b", &[arch.segments], vec![0.0; arch.segments])?;
        normal(&mut t, "aux_w", &[d + f, 3], 0.01)?;
        t.add("aux_b", &[3], vec![0.0; 3])?;
        Ok(t)
    }

    fn add(&mut self, name: &str, shape: &[usize], values: Vec<f32>) -> CResult<()> {
        let v = Var::from_tensor(&Tensor::from_vec(values, shape, &self.device)?)?;
        self.params.insert(name.to_string(), v);
        Ok(())
    }

    /// Fixes the customer-feature standardization: `(x - mean) · inv_std`.
    pub fn set_standardization(&mut self, mean: Vec<f32>, inv_std: Vec<f32>) {
        self.cust_mean = mean;
        self.cust_inv_std = inv_std;
    }

    /// Starts the heads' direct path from a linear model on the same
    /// features (its standardization included), such as the fitted logistic
    /// regression, so that training begins where the linear baseline ends
    /// and the sequence encoder only has to add what the aggregates miss.
    pub fn warm_start(&mut self, lr: &LinearStart) -> CResult<()> {
        self.set_standardization(lr.mean.clone(), lr.inv_std.clone());
        let (d, f, k) = (self.arch.d, CUSTOMER_DIM, self.arch.segments);
        let mut seg_w = self.values("seg_w")?;
        let mut seg_b = self.values("seg_b")?;
        let mut aux_w = self.values("aux_w")?;
        let mut aux_b = self.values("aux_b")?;
        for j in 0..f {
            for o in 0..k {
                seg_w[(d + j) * k + o] = lr.weight(j, o);
            }
            for o in 0..3 {
                aux_w[(d + j) * 3 + o] = lr.weight(j, k + o);
            }
        }
        for (o, b) in seg_b.iter_mut().enumerate() {
            *b = lr.weight(f, o);
        }
        for (o, b) in aux_b.iter_mut().enumerate() {
            *b = lr.weight(f, k + o);
        }
        for (name, v, shape) in [
            ("seg_w", seg_w, vec![d + f, k]),
            ("seg_b", seg_b, vec![k]),
            ("aux_w", aux_w, vec![d + f, 3]),
            ("aux_b", aux_b, vec![3]),
        ] {
            let t = Tensor::from_vec(v, shape, &self.device)?;
            self.params[name].set(&t)?;
        }
        Ok(())
    }

    /// The standardization: (mean, 1 / std) per customer feature.
    pub fn standardization(&self) -> (&[f32], &[f32]) {
        (&self.cust_mean, &self.cust_inv_std)
    }

    /// The parameters, by name (for the optimizer, export and tests).
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Number of trainable values.
    pub fn parameter_count(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// A parameter's values, row-major (for export).
    pub fn values(&self, name: &str) -> CResult<Vec<f32>> {
        self.w(name)?.flatten_all()?.to_vec1::<f32>()
    }

    /// Copies of every parameter (to keep the best epoch).
    pub fn snapshot(&self) -> CResult<BTreeMap<String, Tensor>> {
        self.params
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    /// Restores a [`Self::snapshot`].
    pub fn restore(&self, snap: &BTreeMap<String, Tensor>) -> CResult<()> {
        for (k, v) in &self.params {
            if let Some(t) = snap.get(k) {
                v.set(t)?;
            }
        }
        Ok(())
    }

    fn w(&self, name: &str) -> CResult<&Tensor> {
        self.params
            .get(name)
            .map(|v| v.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter {name}")))
    }

    /// `x · w + b` over the last axis. Leading axes are flattened first so
    /// that it is one large matrix product (a broadcast batched product of
    /// small ones is several times slower on CPU, forward and backward).
    fn linear(&self, x: &Tensor, w: &str, b: &str) -> CResult<Tensor> {
        affine_rows(x, self.w(w)?, self.w(b)?)
    }

    fn layer_norm(&self, x: &Tensor, g: &str, b: &str) -> CResult<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + f64::from(LN_EPS))?.sqrt()?)?;
        // normed · diag(g) + b, as one matrix product (see `affine_rows`).
        let (g, b) = (self.w(g)?, self.w(b)?);
        let d = g.dim(0)?;
        let diag = Tensor::eye(d, DTYPE, &self.device)?.broadcast_mul(&g.reshape((1, d))?)?;
        affine_rows(&normed, &diag, b)
    }

    /// The network on a padded batch (`batch.len` events per row, at most N).
    pub fn forward(&self, batch: &Batch) -> CResult<Heads> {
        self.forward_with(batch, None)
    }

    /// Inverted dropout (training only): zeroes each value with
    /// probability `p`, scales the rest by 1 / (1 - p). Masks come from the
    /// seeded RNG, so training is reproducible.
    fn dropout(&self, x: Tensor, drop: &mut Option<(&mut Rng, f32)>) -> CResult<Tensor> {
        let Some((rng, p)) = drop else {
            return Ok(x);
        };
        if *p <= 0.0 {
            return Ok(x);
        }
        let keep = 1.0 / (1.0 - *p);
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.unit_f32() < *p { 0.0 } else { keep })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), &self.device)?;
        x * mask
    }

    /// The network; with `drop` = (rng, p), dropout is applied to the event
    /// embeddings, each residual branch and the joint representation.
    pub fn forward_with(&self, batch: &Batch, mut drop: Option<(&mut Rng, f32)>) -> CResult<Heads> {
        let a = &self.arch;
        let dev = &self.device;
        let (rows, len, d, t) = (batch.rows, batch.len, a.d, a.text_tokens);
        let e = EVENT_NUMERIC_DIM;
        let flat = rows * len;

        let kinds = Tensor::from_slice(&batch.kinds, flat, dev)?;
        let cats = Tensor::from_slice(&batch.categories, flat, dev)?;
        let numeric = Tensor::from_slice(&batch.numeric, (flat, e), dev)?;

        let x_kind = self.w("kind_emb")?.index_select(&kinds, 0)?;
        let x_cat = self.w("category_emb")?.index_select(&cats, 0)?;
        let x_num = self.linear(&numeric, "numeric_w", "numeric_b")?;
        let freqs = Tensor::from_slice(&TIME_FREQS, (1, TIME_FREQS.len()), dev)?;
        let angle = numeric.narrow(1, 0, 1)?.broadcast_mul(&freqs)?;
        let enc = Tensor::cat(&[angle.sin()?, angle.cos()?], 1)?;
        let x_time = enc.matmul(self.w("time_w")?)?;
        // Bag of text tokens: the mean embedding of each event's non-padding
        // tokens. Only real tokens are gathered (reviews are a small share of
        // events); the export computes the same over all T slots with a zero
        // padding row.
        let (mut tok_ids, mut tok_rows, mut tok_w) = (Vec::new(), Vec::new(), Vec::new());
        for (i, slots) in batch.text.chunks(t.max(1)).enumerate() {
            let real = slots.iter().filter(|&&v| v != 0).count();
            for &v in slots.iter().filter(|&&v| v != 0) {
                tok_ids.push(v);
                tok_rows.push(i as u32);
                tok_w.push(1.0 / real as f32);
            }
        }
        let mut x_text = Tensor::zeros((flat, d), DTYPE, dev)?;
        if !tok_ids.is_empty() {
            let p = tok_ids.len();
            let gathered = self
                .w("text_emb")?
                .index_select(&Tensor::from_vec(tok_ids, p, dev)?, 0)?
                .broadcast_mul(&Tensor::from_vec(tok_w, (p, 1), dev)?)?;
            x_text = x_text.index_add(&Tensor::from_vec(tok_rows, p, dev)?, &gathered, 0)?;
        }
        let x = ((((x_kind + x_cat)? + x_num)? + x_time)? + x_text)?;
        // The position embedding added to every row, as an outer product
        // with a ones column (its gradient is then a matrix product too,
        // see `affine_rows`).
        let pos = self
            .w("pos_emb")?
            .narrow(0, 0, len)?
            .reshape((1, len * d))?;
        let pos = Tensor::ones((rows, 1), DTYPE, dev)?.matmul(&pos)?;
        let x = (x.reshape((rows, len * d))? + pos)?.reshape((rows, len, d))?;
        let mut x = self.dropout(x, &mut drop)?;

        let mask = Tensor::from_slice(&batch.mask, (rows, len), dev)?;
        let bias = mask
            .affine(1.0, -1.0)?
            .affine(f64::from(-MASK_NEG), 0.0)?
            .reshape((rows, 1, 1, len))?;
        let (h, dh) = (a.heads, d / a.heads);
        for l in 0..a.layers {
            let n1 = self.layer_norm(&x, &format!("l{l}.ln1_g"), &format!("l{l}.ln1_b"))?;
            let split = |m: &str| -> CResult<Tensor> {
                self.linear(&n1, &format!("l{l}.{m}_w"), &format!("l{l}.{m}_b"))?
                    .reshape((rows, len, h, dh))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (split("q")?, split("k")?, split("v")?);
            let scores = q
                .matmul(&k.transpose(2, 3)?.contiguous()?)?
                .affine(1.0 / (dh as f64).sqrt(), 0.0)?
                .broadcast_add(&bias)?;
            let probs = softmax_last(&scores)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((rows, len, d))?;
            let attn = self.linear(&ctx, &format!("l{l}.o_w"), &format!("l{l}.o_b"))?;
            x = (x + self.dropout(attn, &mut drop)?)?;
            let n2 = self.layer_norm(&x, &format!("l{l}.ln2_g"), &format!("l{l}.ln2_b"))?;
            let ff = self
                .linear(&n2, &format!("l{l}.ff1_w"), &format!("l{l}.ff1_b"))?
                .relu()?;
            let ff = self.linear(&ff, &format!("l{l}.ff2_w"), &format!("l{l}.ff2_b"))?;
            x = (x + self.dropout(ff, &mut drop)?)?;
        }
        let hf = self.layer_norm(&x, "lnf_g", "lnf_b")?;
        let m3 = mask.reshape((rows, len, 1))?;
        let denom = mask.sum_keepdim(1)?.clamp(1f32, f32::MAX)?;
        let pooled = hf.broadcast_mul(&m3)?.sum(1)?.broadcast_div(&denom)?;
        let cust = Tensor::from_slice(&batch.customer_features, (rows, CUSTOMER_DIM), dev)?
            .broadcast_sub(&Tensor::from_slice(
                &self.cust_mean,
                (1, CUSTOMER_DIM),
                dev,
            )?)?
            .broadcast_mul(&Tensor::from_slice(
                &self.cust_inv_std,
                (1, CUSTOMER_DIM),
                dev,
            )?)?;
        let z = self
            .linear(
                &Tensor::cat(&[pooled, cust.clone()], 1)?,
                "join_w",
                "join_b",
            )?
            .relu()?;
        let z = self.dropout(z, &mut drop)?;
        let wide = Tensor::cat(&[z.clone(), cust.clone()], 1)?;
        let segment_logits = self.linear(&wide, "seg_w", "seg_b")?;
        let aux = self.linear(&wide, "aux_w", "aux_b")?;
        Ok(Heads {
            segment_logits,
            purchase_logit: aux.narrow(1, 0, 1)?.squeeze(1)?,
            churn_logit: aux.narrow(1, 1, 1)?.squeeze(1)?,
            spend: aux.narrow(1, 2, 1)?.squeeze(1)?,
            joint: z,
            customer: cust,
        })
    }

    /// The segment head's weights centered over the segments, as the
    /// explanation uses them: ([d, K] joint part, [K, F] customer-feature
    /// part, transposed, [K] bias). Centering removes what raises every
    /// segment alike, which softmax ignores.
    pub fn centered_segment_head(&self) -> CResult<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (d, f, k) = (self.arch.d, CUSTOMER_DIM, self.arch.segments);
        let w = self.values("seg_w")?;
        let b = self.values("seg_b")?;
        let center = |row: &[f32]| -> Vec<f32> {
            let mean = row.iter().sum::<f32>() / row.len() as f32;
            row.iter().map(|v| v - mean).collect()
        };
        let mut joint = Vec::with_capacity(d * k);
        for r in 0..d {
            joint.extend(center(&w[r * k..(r + 1) * k]));
        }
        let mut feat_t = vec![0.0; k * f];
        for j in 0..f {
            let row = center(&w[(d + j) * k..(d + j + 1) * k]);
            for (o, v) in row.into_iter().enumerate() {
                feat_t[o * f + j] = v;
            }
        }
        Ok((joint, feat_t, center(&b)))
    }

    /// The explanation of `heads` ([`crate::model::SEGMENT_CONTRIBUTIONS`]):
    /// [B, K, F + 2], per segment the F direct-path feature contributions,
    /// the sequence pathway's share and the baseline, all centered over the
    /// segments, so that a row sums to the centered segment logit.
    pub fn contributions(&self, heads: &Heads) -> CResult<Tensor> {
        let (d, f, k) = (self.arch.d, CUSTOMER_DIM, self.arch.segments);
        let dev = &self.device;
        let rows = heads.customer.dim(0)?;
        let (joint, feat_t, bias) = self.centered_segment_head()?;
        let feat_t = Tensor::from_vec(feat_t, (1, k, f), dev)?;
        let features = heads
            .customer
            .reshape((rows, 1, f))?
            .broadcast_mul(&feat_t)?;
        let sequence = heads
            .joint
            .matmul(&Tensor::from_vec(joint, (d, k), dev)?)?
            .reshape((rows, k, 1))?;
        let baseline = Tensor::from_vec(bias, (1, k, 1), dev)?.broadcast_as((rows, k, 1))?;
        Tensor::cat(&[features, sequence, baseline.contiguous()?], 2)
    }
}

/// Softmax over the last axis from primitives. The max is subtracted as a
/// constant (detached): softmax is shift-invariant, so gradients are exact.
pub fn softmax_last(x: &Tensor) -> CResult<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// log-softmax over the last axis from primitives.
pub fn log_softmax_last(x: &Tensor) -> CResult<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Binary cross-entropy with logits, per element, from primitives:
/// `max(z, 0) - z·y + ln(1 + e^-|z|)`.
pub fn bce_with_logits(z: &Tensor, y: &Tensor) -> CResult<Tensor> {
    let soft = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (z.relu()? - (z * y)?)? + soft
}

/// Logistic function (evaluation only).
pub fn sigmoid(z: &Tensor) -> CResult<Tensor> {
    (z.neg()?.exp()? + 1.0)?.recip()
}

/// The DType all parameters use.
pub const DTYPE: DType = DType::F32;

/// `x · w + b` over the last axis of `x`, leading axes flattened first so
/// that it is one large matrix product, computed as `[x, 1] · [w; b]`: the
/// same values, but the bias's gradient comes out of the one product
/// instead of a sum over every row of a broadcast (the tensor library
/// reduces across rows slowly on CPU; with bias and layer-norm terms in
/// every layer that reduction was about a sixth of a training step).
fn affine_rows(x: &Tensor, w: &Tensor, b: &Tensor) -> CResult<Tensor> {
    let mut dims = x.dims().to_vec();
    let inner = dims.last().copied().unwrap_or(1);
    let rows = x.elem_count() / inner.max(1);
    let ones = Tensor::ones((rows, 1), x.dtype(), x.device())?;
    let x1 = Tensor::cat(&[&x.reshape((rows, inner))?, &ones], 1)?;
    let w1 = Tensor::cat(&[w, &b.reshape((1, b.elem_count()))?], 0)?;
    if let Some(last) = dims.last_mut() {
        *last = w.dim(1)?;
    }
    x1.matmul(&w1)?.reshape(dims)
}
