//! The training loop: AdamW, class-weighted segment loss plus the auxiliary
//! heads, length-bucketed mini-batches, early stopping on the validation
//! loss (the best epoch's weights are kept).

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::examples::{class_weights, Batch, ExampleSet};
use super::net::{bce_with_logits, log_softmax_last, sigmoid, softmax_last, Transformer};
use super::Rng;
use crate::config::TrainConfig;
use crate::model::reference::Outputs;
use crate::model::Segment;

/// Weight of the log-spend regression term in the loss.
const SPEND_LOSS_WEIGHT: f64 = 4.0;

/// Most validation examples the per-epoch early-stopping loss is computed
/// on (an evenly spread sample; the final metrics use every one).
const EARLY_STOP_SAMPLE: usize = 4_096;

/// Optimizer steps of linear warm-up.
const WARMUP_STEPS: usize = 50;

/// The learning rate at `step` of `total`: linear warm-up, then a cosine
/// decay to 5% of `peak` at the last step of the last epoch. Early
/// stopping may end training before, with the rate already lowered.
pub fn learning_rate(peak: f64, step: usize, total: usize) -> f64 {
    if step < WARMUP_STEPS {
        return peak * (step + 1) as f64 / WARMUP_STEPS as f64;
    }
    let span = total.saturating_sub(WARMUP_STEPS).max(1) as f64;
    let progress = ((step - WARMUP_STEPS) as f64 / span).min(1.0);
    let floor = 0.05;
    peak * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Seconds the epoch took.
    pub seconds: f64,
}

/// What training did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FitReport {
    /// Every epoch run.
    pub epochs: Vec<EpochReport>,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Total seconds.
    pub seconds: f64,
}

/// Index order for one epoch: shuffled, then bucketed by length in groups of
/// 32 batches (padding follows the longest row of a batch), batches shuffled.
fn epoch_batches(set: &ExampleSet, batch: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..set.len()).collect();
    rng.shuffle(&mut idx);
    let mut batches = Vec::new();
    for group in idx.chunks(batch * 32) {
        let mut g = group.to_vec();
        g.sort_by_key(|&i| set.events_of(i));
        batches.extend(g.chunks(batch).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    batches
}

/// The loss of a batch (a scalar tensor).
#[allow(clippy::too_many_arguments)]
pub fn loss(
    net: &Transformer,
    set: &ExampleSet,
    idx: &[usize],
    batch: &Batch,
    weights: &[f32; Segment::COUNT],
    spend_scale: f32,
    device: &Device,
    dropout: Option<(&mut Rng, f32)>,
) -> candle_core::Result<Tensor> {
    let heads = net.forward_with(batch, dropout)?;
    let k = net.arch.segments;
    let rows = idx.len();
    let mut onehot = vec![0f32; rows * k];
    let mut row_w = vec![0f32; rows];
    let mut sample_w = Vec::with_capacity(rows);
    let (mut bought, mut churned, mut spend) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    for (r, &i) in idx.iter().enumerate() {
        let l = set.labels[i];
        let s = l.segment.index();
        onehot[r * k + s] = 1.0;
        // Sampling weight (1 / keep rate) times the class weight.
        row_w[r] = weights[s] * set.weight[i];
        sample_w.push(set.weight[i]);
        bought.push(f32::from(u8::from(l.purchased)));
        churned.push(f32::from(u8::from(l.churned)));
        spend.push((l.spend_minor.max(0) as f32).ln_1p() / spend_scale);
    }
    let w_total: f32 = row_w.iter().sum();
    let onehot = Tensor::from_vec(onehot, (rows, k), device)?;
    let row_w = Tensor::from_vec(row_w, rows, device)?;
    let nll = (log_softmax_last(&heads.segment_logits)? * onehot)?
        .sum(1)?
        .neg()?;
    let seg = ((nll * row_w)?.sum_all()? / f64::from(w_total.max(1e-6)))?;
    let bought = Tensor::from_vec(bought, rows, device)?;
    let churned = Tensor::from_vec(churned, rows, device)?;
    let spend = Tensor::from_vec(spend, rows, device)?;
    let sw_total: f32 = sample_w.iter().sum();
    let sample_w = Tensor::from_vec(sample_w, rows, device)?;
    let weighted_mean = |x: Tensor| (x * &sample_w)?.sum_all()? / f64::from(sw_total.max(1e-6));
    let p = weighted_mean(bce_with_logits(&heads.purchase_logit, &bought)?)?;
    let c = weighted_mean(bce_with_logits(&heads.churn_logit, &churned)?)?;
    let s = weighted_mean((heads.spend - spend)?.sqr()?)?;
    ((seg + p)? + c)? + (s * SPEND_LOSS_WEIGHT)?
}

fn mean_loss(
    net: &Transformer,
    set: &ExampleSet,
    weights: &[f32; Segment::COUNT],
    spend_scale: f32,
    device: &Device,
) -> candle_core::Result<f64> {
    let mut idx: Vec<usize> = (0..set.len()).collect();
    idx.sort_by_key(|&i| set.events_of(i));
    let (mut total, mut n) = (0f64, 0usize);
    for chunk in idx.chunks(512) {
        let b = set.batch(chunk, None);
        let l = loss(net, set, chunk, &b, weights, spend_scale, device, None)?;
        total += f64::from(l.to_scalar::<f32>()?) * chunk.len() as f64;
        n += chunk.len();
    }
    Ok(total / n.max(1) as f64)
}

/// Trains `net` on `train`, early-stopping on `val`; `progress` hears of
/// every batch and every epoch.
pub fn fit(
    net: &Transformer,
    train: &ExampleSet,
    val: &ExampleSet,
    cfg: &TrainConfig,
    spend_scale: f32,
    device: &Device,
    progress: &mut super::Progress<'_>,
) -> candle_core::Result<FitReport> {
    let started = Instant::now();
    let weights = class_weights(train);
    let vars: Vec<_> = net.params().values().cloned().collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = super::rng(cfg.seed ^ 0x5eed);
    let mut drop_rng = super::rng(cfg.seed ^ 0xd20f);
    let mut report = FitReport::default();
    let step_of = val.len().div_ceil(EARLY_STOP_SAMPLE).max(1);
    let val = &val.subset(|i| i % step_of == 0);
    let total_steps = cfg.max_epochs * train.len().div_ceil(cfg.batch_size.max(1));
    let mut global_step = 0;
    // Epoch 0 (the starting point, e.g. a warm start) is a candidate too.
    let mut best = (
        mean_loss(net, val, &weights, spend_scale, device)?,
        net.snapshot()?,
    );
    let mut since_best = 0;
    for epoch in 1..=cfg.max_epochs {
        let t0 = Instant::now();
        let batches = epoch_batches(train, cfg.batch_size, &mut rng);
        let (mut sum, mut n) = (0f64, 0usize);
        for (step, idx) in batches.iter().enumerate() {
            opt.set_learning_rate(learning_rate(cfg.learning_rate, global_step, total_steps));
            global_step += 1;
            let b = train.batch(idx, None);
            let l = loss(
                net,
                train,
                idx,
                &b,
                &weights,
                spend_scale,
                device,
                Some((&mut drop_rng, cfg.dropout)),
            )?;
            sum += f64::from(l.to_scalar::<f32>()?) * idx.len() as f64;
            n += idx.len();
            opt.backward_step(&l)?;
            (progress.step)(step + 1, batches.len());
        }
        let val_loss = mean_loss(net, val, &weights, spend_scale, device)?;
        let e = EpochReport {
            epoch,
            train_loss: sum / n.max(1) as f64,
            val_loss,
            seconds: t0.elapsed().as_secs_f64(),
        };
        (progress.epoch)(&e);
        report.epochs.push(e);
        if val_loss < best.0 {
            best = (val_loss, net.snapshot()?);
            report.best_epoch = epoch;
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                break;
            }
        }
    }
    net.restore(&best.1)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Model outputs (as the ONNX graph defines them) for every example, in
/// batches padded to `pad_to` events (None: each batch's longest row).
pub fn predict(
    net: &Transformer,
    set: &ExampleSet,
    spend_scale: f32,
    pad_to: Option<usize>,
) -> candle_core::Result<Outputs> {
    predict_with(net, set, spend_scale, pad_to, false)
}

/// [`predict`], with the explanation output too when `explain` is set (as
/// the exported model gives it; for the parity check and golden outputs).
pub fn predict_with(
    net: &Transformer,
    set: &ExampleSet,
    spend_scale: f32,
    pad_to: Option<usize>,
    explain: bool,
) -> candle_core::Result<Outputs> {
    let mut out = Outputs::default();
    let mut idx: Vec<usize> = (0..set.len()).collect();
    if pad_to.is_none() {
        // Length order: a chunk pads to its longest row, so similar lengths
        // together compute little padding. Rows go back in place below.
        idx.sort_by_key(|&i| set.events_of(i));
    }
    for chunk in idx.chunks(512) {
        let b = set.batch(chunk, pad_to);
        let h = net.forward(&b)?;
        if explain {
            out.segment_contributions
                .extend(net.contributions(&h)?.flatten_all()?.to_vec1::<f32>()?);
        }
        out.segment_probs.extend(
            softmax_last(&h.segment_logits)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        let c = net.calibration;
        let platt = |logit: &Tensor, (a, b): (f32, f32)| {
            sigmoid(&logit.affine(f64::from(a), f64::from(b))?)?.to_vec1::<f32>()
        };
        out.purchase_probability
            .extend(platt(&h.purchase_logit, c.purchase)?);
        out.churn_probability
            .extend(platt(&h.churn_logit, c.churn)?);
        out.predicted_spend.extend(
            ((h.spend * f64::from(spend_scale))?
                .exp()?
                .affine(f64::from(c.smear), -f64::from(c.smear))?)
            .relu()?
            .to_vec1::<f32>()?,
        );
    }
    Ok(if pad_to.is_none() {
        in_set_order(out, &idx)
    } else {
        out
    })
}

/// Outputs computed for rows `order[0], order[1], ...` back in set order
/// (row `order[j]` at position `order[j]`).
fn in_set_order(out: Outputs, order: &[usize]) -> Outputs {
    let place = |v: Vec<f32>| -> Vec<f32> {
        if v.is_empty() || order.is_empty() {
            return v;
        }
        let width = v.len() / order.len();
        let mut placed = vec![0f32; v.len()];
        for (j, &i) in order.iter().enumerate() {
            placed[i * width..(i + 1) * width].copy_from_slice(&v[j * width..(j + 1) * width]);
        }
        placed
    };
    Outputs {
        segment_probs: place(out.segment_probs),
        purchase_probability: place(out.purchase_probability),
        churn_probability: place(out.churn_probability),
        predicted_spend: place(out.predicted_spend),
        segment_contributions: place(out.segment_contributions),
    }
}
