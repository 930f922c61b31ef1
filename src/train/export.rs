//! ONNX export of the trained Transformer, op for op the computation of
//! `net.rs`, written with the project's own `model::onnx` builder (opset 17).
//! Padded events are computed and then masked out of attention and pooling,
//! exactly as in training, so a batch padded to N gives the same outputs as
//! one padded to its longest row (the parity check proves it).

use super::baselines::Logistic;
use super::net::{Calibration, Transformer, LN_EPS, MASK_NEG, TIME_FREQS};
use crate::features::{FeatureSpec, CUSTOMER_DIM, EVENT_NUMERIC_DIM};
use crate::model::onnx::{Attr, GraphBuilder};
use crate::model::Segment;

/// The ONNX model of `net` for `spec`, with the explanation output.
pub fn to_onnx(
    net: &Transformer,
    spec: &FeatureSpec,
    version: &str,
) -> candle_core::Result<Vec<u8>> {
    to_onnx_with(net, spec, version, true)
}

/// The ONNX model of `net` for `spec`; with `explain`, it also gives
/// [`crate::model::SEGMENT_CONTRIBUTIONS`] (the benchmark measures its cost
/// by exporting both).
pub fn to_onnx_with(
    net: &Transformer,
    spec: &FeatureSpec,
    version: &str,
    explain: bool,
) -> candle_core::Result<Vec<u8>> {
    let a = &net.arch;
    let (d, h) = (a.d as i64, a.heads as i64);
    let dh = d / h;
    let mut g = GraphBuilder::new("segstream_transformer");
    // The event dimension is dynamic: the scorer passes only as many
    // events as the batch's longest history (padding changes nothing:
    // masked out of attention and pooling), so a customer with 3 events
    // does not cost 64 events of compute.
    let [kind, cat, numeric, text, mask, cust] =
        g.contract_inputs_with(spec, crate::model::onnx::Dim::Dynamic("events"));
    let param = |g: &mut GraphBuilder, name: &str, dims: &[i64]| -> candle_core::Result<String> {
        Ok(g.init_f32(name, dims, &net.values(name)?))
    };
    let c_i64 =
        |g: &mut GraphBuilder, name: &str, dims: &[i64], v: &[i64]| g.init_i64(name, dims, v);

    // Per-event embedding.
    let kind_emb = param(&mut g, "kind_emb", &[a.kinds as i64, d])?;
    let cat_emb = param(&mut g, "category_emb", &[a.categories as i64, d])?;
    let x_kind = g.op("Gather", &[&kind_emb, &kind], &[Attr::Int("axis", 0)]);
    let x_cat = g.op("Gather", &[&cat_emb, &cat], &[Attr::Int("axis", 0)]);
    let num_w = param(&mut g, "numeric_w", &[EVENT_NUMERIC_DIM as i64, d])?;
    let num_b = param(&mut g, "numeric_b", &[d])?;
    let x_num = g.op("MatMul", &[&numeric, &num_w], &[]);
    let x_num = g.op("Add", &[&x_num, &num_b], &[]);
    let (s0, s1, ax2) = (
        c_i64(&mut g, "slice_start0", &[1], &[0]),
        c_i64(&mut g, "slice_end1", &[1], &[1]),
        c_i64(&mut g, "axis2", &[1], &[2]),
    );
    let age = g.op("Slice", &[&numeric, &s0, &s1, &ax2], &[]);
    let freqs = g.init_f32("time_freqs", &[TIME_FREQS.len() as i64], &TIME_FREQS);
    let angle = g.op("Mul", &[&age, &freqs], &[]);
    let sin = g.op("Sin", &[&angle], &[]);
    let cos = g.op("Cos", &[&angle], &[]);
    let enc = g.op("Concat", &[&sin, &cos], &[Attr::Int("axis", 2)]);
    let time_w = param(&mut g, "time_w", &[2 * TIME_FREQS.len() as i64, d])?;
    let x_time = g.op("MatMul", &[&enc, &time_w], &[]);
    // Text bag: the table's padding row is exported as zeros (training holds it there).
    let mut table = net.values("text_emb")?;
    for v in table.iter_mut().take(a.d) {
        *v = 0.0;
    }
    let table = g.init_f32("text_emb", &[a.text_buckets as i64, d], &table);
    let tok = g.op("Gather", &[&table, &text], &[Attr::Int("axis", 0)]);
    let bag = g.op("ReduceSum", &[&tok, &ax2], &[Attr::Int("keepdims", 0)]);
    let zero_i = g.init_i64("zero_i64", &[], &[0]);
    let real = g.op("Greater", &[&text, &zero_i], &[]);
    let real = g.op("Cast", &[&real], &[Attr::Int("to", 1)]);
    let count = g.op("ReduceSum", &[&real, &ax2], &[Attr::Int("keepdims", 1)]);
    let one = g.init_f32("one", &[], &[1.0]);
    let count = g.op("Max", &[&count, &one], &[]);
    let x_text = g.op("Div", &[&bag, &count], &[]);
    // The position table's first N rows, N the input's event dimension.
    let pos_all = param(&mut g, "pos_emb", &[a.max_events as i64, d])?;
    let kind_shape = g.op("Shape", &[&kind], &[]);
    let e2 = c_i64(&mut g, "slice_end2", &[1], &[2]);
    let n_events = g.op("Slice", &[&kind_shape, &s1, &e2], &[]);
    let pos = g.op("Slice", &[&pos_all, &s0, &n_events], &[]);
    let mut x = g.op("Add", &[&x_kind, &x_cat], &[]);
    for part in [&x_num, &x_time, &x_text, &pos] {
        x = g.op("Add", &[&x, part], &[]);
    }

    // Attention bias: (mask - 1) · 1e9, as [B, 1, 1, N].
    let neg = g.init_f32("mask_scale", &[], &[-MASK_NEG]);
    let bias = g.op("Sub", &[&mask, &one], &[]);
    let bias = g.op("Mul", &[&bias, &neg], &[]);
    let ax12 = c_i64(&mut g, "axes12", &[2], &[1, 2]);
    let bias = g.op("Unsqueeze", &[&bias, &ax12], &[]);
    let heads_shape = c_i64(&mut g, "heads_shape", &[4], &[0, 0, h, dh]);
    let model_shape = c_i64(&mut g, "model_shape", &[3], &[0, 0, d]);
    let scale = g.init_f32("attn_scale", &[], &[1.0 / (dh as f32).sqrt()]);
    let ln = |g: &mut GraphBuilder, x: &str, gain: &str, bias: &str| {
        g.op(
            "LayerNormalization",
            &[x, gain, bias],
            &[Attr::Int("axis", -1), Attr::Float("epsilon", LN_EPS)],
        )
    };
    let lin = |g: &mut GraphBuilder, x: &str, w: &str, b: &str| {
        let y = g.op("MatMul", &[x, w], &[]);
        g.op("Add", &[&y, b], &[])
    };
    for l in 0..a.layers {
        let p = |s: &str| format!("l{l}.{s}");
        let ln1_g = param(&mut g, &p("ln1_g"), &[d])?;
        let ln1_b = param(&mut g, &p("ln1_b"), &[d])?;
        let n1 = ln(&mut g, &x, &ln1_g, &ln1_b);
        let mut qkv = Vec::new();
        for (m, perm) in [
            ("q", vec![0, 2, 1, 3]),
            ("k", vec![0, 2, 3, 1]),
            ("v", vec![0, 2, 1, 3]),
        ] {
            let w = param(&mut g, &p(&format!("{m}_w")), &[d, d])?;
            let b = param(&mut g, &p(&format!("{m}_b")), &[d])?;
            let y = lin(&mut g, &n1, &w, &b);
            let y = g.op("Reshape", &[&y, &heads_shape], &[]);
            qkv.push(g.op("Transpose", &[&y], &[Attr::Ints("perm", perm)]));
        }
        let scores = g.op("MatMul", &[&qkv[0], &qkv[1]], &[]);
        let scores = g.op("Mul", &[&scores, &scale], &[]);
        let scores = g.op("Add", &[&scores, &bias], &[]);
        let probs = g.op("Softmax", &[&scores], &[Attr::Int("axis", -1)]);
        let ctx = g.op("MatMul", &[&probs, &qkv[2]], &[]);
        let ctx = g.op(
            "Transpose",
            &[&ctx],
            &[Attr::Ints("perm", vec![0, 2, 1, 3])],
        );
        let ctx = g.op("Reshape", &[&ctx, &model_shape], &[]);
        let o_w = param(&mut g, &p("o_w"), &[d, d])?;
        let o_b = param(&mut g, &p("o_b"), &[d])?;
        let attn = lin(&mut g, &ctx, &o_w, &o_b);
        x = g.op("Add", &[&x, &attn], &[]);
        let ln2_g = param(&mut g, &p("ln2_g"), &[d])?;
        let ln2_b = param(&mut g, &p("ln2_b"), &[d])?;
        let n2 = ln(&mut g, &x, &ln2_g, &ln2_b);
        let ff1_w = param(&mut g, &p("ff1_w"), &[d, a.ffn as i64])?;
        let ff1_b = param(&mut g, &p("ff1_b"), &[a.ffn as i64])?;
        let ff = lin(&mut g, &n2, &ff1_w, &ff1_b);
        let ff = g.op("Relu", &[&ff], &[]);
        let ff2_w = param(&mut g, &p("ff2_w"), &[a.ffn as i64, d])?;
        let ff2_b = param(&mut g, &p("ff2_b"), &[d])?;
        let ff = lin(&mut g, &ff, &ff2_w, &ff2_b);
        x = g.op("Add", &[&x, &ff], &[]);
    }
    let lnf_g = param(&mut g, "lnf_g", &[d])?;
    let lnf_b = param(&mut g, "lnf_b", &[d])?;
    let hf = ln(&mut g, &x, &lnf_g, &lnf_b);

    // Masked mean pooling, joined with the customer features.
    let m3 = g.op("Unsqueeze", &[&mask, &ax2], &[]);
    let masked = g.op("Mul", &[&hf, &m3], &[]);
    let ax1 = c_i64(&mut g, "axis1", &[1], &[1]);
    let sum = g.op("ReduceSum", &[&masked, &ax1], &[Attr::Int("keepdims", 0)]);
    let denom = g.op("ReduceSum", &[&mask, &ax1], &[Attr::Int("keepdims", 1)]);
    let denom = g.op("Max", &[&denom, &one], &[]);
    let pooled = g.op("Div", &[&sum, &denom], &[]);
    let (mean, inv_std) = net.standardization();
    let mean = g.init_f32("cust_mean", &[CUSTOMER_DIM as i64], mean);
    let inv_std = g.init_f32("cust_inv_std", &[CUSTOMER_DIM as i64], inv_std);
    let cust = g.op("Sub", &[&cust, &mean], &[]);
    let cust = g.op("Mul", &[&cust, &inv_std], &[]);
    let joined = g.op("Concat", &[&pooled, &cust], &[Attr::Int("axis", 1)]);
    let join_w = param(&mut g, "join_w", &[d + CUSTOMER_DIM as i64, d])?;
    let join_b = param(&mut g, "join_b", &[d])?;
    let z = lin(&mut g, &joined, &join_w, &join_b);
    let z = g.op("Relu", &[&z], &[]);
    let wide = g.op("Concat", &[&z, &cust], &[Attr::Int("axis", 1)]);
    let dw = d + CUSTOMER_DIM as i64;

    // Heads.
    let seg_w = param(&mut g, "seg_w", &[dw, a.segments as i64])?;
    let seg_b = param(&mut g, "seg_b", &[a.segments as i64])?;
    let logits = lin(&mut g, &wide, &seg_w, &seg_b);
    g.op_into(
        "Softmax",
        &[&logits],
        "segment_probs",
        &[Attr::Int("axis", 1)],
    );
    let aux_w = param(&mut g, "aux_w", &[dw, 3])?;
    let aux_b = param(&mut g, "aux_b", &[3])?;
    let aux = lin(&mut g, &wide, &aux_w, &aux_b);
    let column = |g: &mut GraphBuilder, i: i64| {
        let idx = g.init_i64(&format!("aux_col{i}"), &[], &[i]);
        g.op("Gather", &[&aux, &idx], &[Attr::Int("axis", 1)])
    };
    // Calibration fitted after training (identity until then).
    let c = net.calibration;
    let purchase = column(&mut g, 0);
    let pa = g.init_f32("purchase_platt_a", &[], &[c.purchase.0]);
    let pb = g.init_f32("purchase_platt_b", &[], &[c.purchase.1]);
    let purchase = g.op("Mul", &[&purchase, &pa], &[]);
    let purchase = g.op("Add", &[&purchase, &pb], &[]);
    g.op_into("Sigmoid", &[&purchase], "purchase_probability", &[]);
    let churn = column(&mut g, 1);
    let ca = g.init_f32("churn_platt_a", &[], &[c.churn.0]);
    let cb = g.init_f32("churn_platt_b", &[], &[c.churn.1]);
    let churn = g.op("Mul", &[&churn, &ca], &[]);
    let churn = g.op("Add", &[&churn, &cb], &[]);
    g.op_into("Sigmoid", &[&churn], "churn_probability", &[]);
    let spend = column(&mut g, 2);
    let spend_scale = g.init_f32("spend_scale", &[], &[spec.normalization.spend_log_scale]);
    let spend = g.op("Mul", &[&spend, &spend_scale], &[]);
    let spend = g.op("Exp", &[&spend], &[]);
    let spend = g.op("Sub", &[&spend, &one], &[]);
    let factor = g.init_f32("spend_factor", &[], &[c.smear]);
    let spend = g.op("Mul", &[&spend, &factor], &[]);
    g.op_into("Relu", &[&spend], "predicted_spend", &[]);
    g.contract_outputs(a.segments);
    if explain {
        // Explanations: the centered segment head applied part by part
        // (see `Transformer::contributions`), [B, K, F + 2].
        let (k, f) = (a.segments as i64, CUSTOMER_DIM as i64);
        let (joint_w, feat_w, bias) = net.centered_segment_head()?;
        let feat_w = g.init_f32("explain_feature_w", &[k, f], &feat_w);
        let joint_w = g.init_f32("explain_joint_w", &[d, k], &joint_w);
        let bias = g.init_f32("explain_bias", &[1, k, 1], &bias);
        let cust3 = g.op("Unsqueeze", &[&cust, &ax1], &[]);
        let features = g.op("Mul", &[&cust3, &feat_w], &[]);
        let sequence = g.op("MatMul", &[&z, &joint_w], &[]);
        let sequence = g.op("Unsqueeze", &[&sequence, &ax2], &[]);
        let shape = g.op("Shape", &[&sequence], &[]);
        let baseline = g.op("Expand", &[&bias, &shape], &[]);
        explanation_output(&mut g, [&features, &sequence, &baseline], k as usize);
    }
    let layers = a.layers.to_string();
    let width = a.d.to_string();
    Ok(g.finish(
        "segstream Transformer: event-sequence encoder + customer features, four heads",
        &[
            ("segstream.version", version),
            ("segstream.layers", &layers),
            ("segstream.d_model", &width),
        ],
    ))
}

/// The explanation output ([`crate::model::SEGMENT_CONTRIBUTIONS`],
/// [B, K, F + 2]) from its three parts: the features' [B, K, F], the
/// sequence's and the baseline's [B, K, 1] each.
fn explanation_output(g: &mut GraphBuilder, [features, sequence, baseline]: [&str; 3], k: usize) {
    use crate::model::onnx::{Dim, Elem};
    g.op_into(
        "Concat",
        &[features, sequence, baseline],
        crate::model::SEGMENT_CONTRIBUTIONS,
        &[Attr::Int("axis", 2)],
    );
    g.output(
        crate::model::SEGMENT_CONTRIBUTIONS,
        Elem::F32,
        &[
            Dim::Dynamic("batch"),
            Dim::Fixed(k as i64),
            Dim::Fixed(CUSTOMER_DIM as i64 + 2),
        ],
    );
}

/// The ONNX model of the logistic regression `model`, calibrated by `c`,
/// with the Transformer's contract: the same inputs (the event inputs are
/// accepted and not read), the same outputs and the explanation output
/// (see [`Logistic::predict_with`], which computes the same numbers). Its
/// cost is one matrix product per batch, whatever the histories' length.
pub fn logistic_to_onnx(
    model: &Logistic,
    c: &Calibration,
    spec: &FeatureSpec,
    version: &str,
) -> Vec<u8> {
    let (k, f) = (Segment::COUNT, CUSTOMER_DIM);
    let mut g = GraphBuilder::new("segstream_logistic");
    let [_kind, _category, _numeric, _text, _mask, cust] =
        g.contract_inputs_with(spec, crate::model::onnx::Dim::Dynamic("events"));
    let (mean, inv_std) = model.standardization();
    let mean = g.init_f32("cust_mean", &[f as i64], &mean);
    let inv_std = g.init_f32("cust_inv_std", &[f as i64], &inv_std);
    let x = g.op("Sub", &[&cust, &mean], &[]);
    let x = g.op("Mul", &[&x, &inv_std], &[]);
    // Weights [F, outputs] and biases [outputs] of a range of outputs.
    let head = |g: &mut GraphBuilder, name: &str, outputs: std::ops::Range<usize>| {
        let width = outputs.len();
        let w: Vec<f32> = (0..f)
            .flat_map(|j| outputs.clone().map(move |o| (j, o)))
            .map(|(j, o)| model.weight(j, o))
            .collect();
        let b: Vec<f32> = outputs.clone().map(|o| model.weight(f, o)).collect();
        let w = g.init_f32(&format!("{name}_w"), &[f as i64, width as i64], &w);
        let b = g.init_f32(&format!("{name}_b"), &[width as i64], &b);
        let y = g.op("MatMul", &[&x, &w], &[]);
        g.op("Add", &[&y, &b], &[])
    };
    let logits = head(&mut g, "seg", 0..k);
    g.op_into(
        "Softmax",
        &[&logits],
        "segment_probs",
        &[Attr::Int("axis", 1)],
    );
    let calibrated = |g: &mut GraphBuilder, name: &str, o: usize, (a, b): (f32, f32)| {
        let z = head(g, name, o..o + 1);
        let a = g.init_f32(&format!("{name}_platt_a"), &[], &[a]);
        let b = g.init_f32(&format!("{name}_platt_b"), &[], &[b]);
        let z = g.op("Mul", &[&z, &a], &[]);
        let z = g.op("Add", &[&z, &b], &[]);
        let z = g.op("Sigmoid", &[&z], &[]);
        let axis = g.init_i64(&format!("{name}_axis"), &[1], &[1]);
        g.op_into("Squeeze", &[&z, &axis], name, &[]);
    };
    calibrated(&mut g, "purchase_probability", k, c.purchase);
    calibrated(&mut g, "churn_probability", k + 1, c.churn);
    let spend = head(&mut g, "spend", k + 2..k + 3);
    let scale = g.init_f32("spend_scale", &[], &[model.spend_scale()]);
    let one = g.init_f32("one", &[], &[1.0]);
    let factor = g.init_f32("spend_factor", &[], &[c.smear]);
    let spend = g.op("Mul", &[&spend, &scale], &[]);
    let spend = g.op("Exp", &[&spend], &[]);
    let spend = g.op("Sub", &[&spend, &one], &[]);
    let spend = g.op("Mul", &[&spend, &factor], &[]);
    let spend = g.op("Relu", &[&spend], &[]);
    let axis = g.init_i64("spend_axis", &[1], &[1]);
    g.op_into("Squeeze", &[&spend, &axis], "predicted_spend", &[]);
    g.contract_outputs(k);

    // Explanations, [B, K, F + 2]: feature × centered weight, 0 for the
    // sequence, the centered bias.
    let centered = model.centered_segment_weights();
    let feat_w: Vec<f32> = (0..k)
        .flat_map(|s| (0..f).map(move |j| (j, s)))
        .map(|(j, s)| centered[j * k + s])
        .collect();
    let bias: Vec<f32> = (0..k).map(|s| centered[f * k + s]).collect();
    let feat_w = g.init_f32("explain_feature_w", &[k as i64, f as i64], &feat_w);
    let bias = g.init_f32("explain_bias", &[1, k as i64, 1], &bias);
    let zero = g.init_f32("explain_sequence", &[1, k as i64, 1], &vec![0.0; k]);
    let ax1 = g.init_i64("axis1", &[1], &[1]);
    let x3 = g.op("Unsqueeze", &[&x, &ax1], &[]);
    let features = g.op("Mul", &[&x3, &feat_w], &[]);
    let ax2 = g.init_i64("axis2", &[1], &[2]);
    let first = g.init_i64("first", &[1], &[0]);
    let one_col = g.init_i64("one_col", &[1], &[1]);
    // [B, K, 1] of zeros shaped like the batch: a slice of the features.
    let column = g.op("Slice", &[&features, &first, &one_col, &ax2], &[]);
    let sequence = g.op("Mul", &[&column, &zero], &[]);
    let baseline = g.op("Add", &[&sequence, &bias], &[]);
    explanation_output(&mut g, [&features, &sequence, &baseline], k);
    g.finish(
        "segstream logistic regression: customer features, four heads",
        &[
            ("segstream.version", version),
            ("segstream.family", "logistic"),
        ],
    )
}
