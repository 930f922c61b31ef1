//! The live quality report (`segstream report`): the outcomes the pipeline
//! published (`output.outcomes_topic`), per model version and cut, as a
//! table (champion against the baselines, shadow models against the
//! champion, with paired bootstrap intervals), the drift of the champion's
//! inputs and outputs against its training reference, and one
//! self-contained HTML page of figures drawn with `plotters`
//! ([`figures`]): live AUC and calibration per cut, a reliability diagram,
//! a gains chart, realized rates per predicted segment, drift per cut, and
//! the champion's segment flows between cuts ([`page`]).

mod figures;
mod page;

pub use figures::{figures, Figure};
pub use page::{flows, html};

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::event::proto::Outcome;
use crate::model::reference::Outputs;
use crate::model::Segment;
use crate::train::examples::Labels;
use crate::train::metrics::{self, MarginLine};

/// One model's live figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelRow {
    /// Model version (`rfm_rules`, `bgnbd_gamma_gamma` for the baselines).
    pub model: String,
    /// `champion` or `baseline`.
    pub role: String,
    /// Outcomes.
    pub outcomes: usize,
    /// AUC of the purchase probability.
    pub purchase_auc: f64,
    /// AUC of the churn probability.
    pub churn_auc: f64,
    /// Mean predicted purchase probability / realized purchase rate.
    pub purchase_calibration: f64,
    /// Predicted spend / realized spend.
    pub spend_ratio: f64,
}

/// One model at one cut.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CutRow {
    /// Model version.
    pub model: String,
    /// Cut time (ms).
    pub cut_ms: i64,
    /// Outcomes.
    pub outcomes: usize,
    /// Purchase AUC (NaN with one class only).
    pub purchase_auc: f64,
    /// Mean predicted purchase probability.
    pub predicted_rate: f64,
    /// Realized purchase rate.
    pub realized_rate: f64,
}

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Live {
    /// Per model, over every cut.
    pub models: Vec<ModelRow>,
    /// Per model and cut.
    pub cuts: Vec<CutRow>,
    /// Champion minus each baseline, and each shadow model minus the
    /// champion, on the customers and cuts both predicted (paired
    /// bootstrap over customers).
    pub margins: Vec<MarginLine>,
    /// The champion's drift per cut and feature (or output), where its
    /// manifest has a reference (see [`drift`]).
    pub drift: Vec<DriftRow>,
}

/// One customer feature (or output) of the champion at one cut.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DriftRow {
    /// Model version.
    pub model: String,
    /// Cut time (ms).
    pub cut_ms: i64,
    /// The feature's or output's name.
    pub feature: String,
    /// Population stability index against the training reference.
    pub psi: f64,
    /// Snapshots counted.
    pub snapshots: usize,
}

/// The champion's drift at each cut: for every customer feature (from the
/// outcomes' `feature_bins`) and output (from their predictions), the
/// population stability index of the cut's snapshots against the
/// reference in the model's manifest (`references`, by version; versions
/// without one are left out).
pub fn drift(
    outcomes: &[Outcome],
    references: &BTreeMap<String, crate::model::drift::Reference>,
) -> Vec<DriftRow> {
    use crate::model::drift::psi;
    let mut groups: BTreeMap<(&str, i64), Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes
        .iter()
        .filter(|o| o.role == "champion" && !o.feature_bins.is_empty())
    {
        groups
            .entry((o.model_version.as_str(), o.cut_ms))
            .or_default()
            .push(o);
    }
    let mut out = Vec::new();
    for ((model, cut), rows) in groups {
        let Some(r) = references.get(model) else {
            continue;
        };
        // Every quantity of the reference, features then outputs, counted
        // per bin in one pass over the cut's outcomes.
        let quantities: Vec<&crate::model::drift::Binned> =
            r.features.iter().chain(&r.outputs).collect();
        let mut counts: Vec<Vec<u64>> = quantities.iter().map(|b| vec![0; b.bins()]).collect();
        let f = r.features.len();
        for o in &rows {
            let outputs = [
                o.purchase_probability,
                o.churn_probability,
                o.predicted_spend,
            ];
            let bins = (0..f)
                .map(|j| o.feature_bins.get(j).map(|b| *b as usize))
                .chain(outputs.iter().zip(&r.outputs).map(|(x, b)| Some(b.bin(*x))));
            for (c, bin) in counts.iter_mut().zip(bins) {
                if let Some(c) = bin.and_then(|b| c.get_mut(b)) {
                    *c += 1;
                }
            }
        }
        for (b, counts) in quantities.iter().zip(&counts) {
            out.push(DriftRow {
                model: model.to_string(),
                cut_ms: cut,
                feature: b.name.clone(),
                psi: psi(&b.shares, counts),
                snapshots: rows.len(),
            });
        }
    }
    out
}

/// The latest cut's drift rows of the latest model, largest index first.
pub fn latest_drift(live: &Live) -> Vec<&DriftRow> {
    let Some(last) = live.drift.iter().max_by_key(|d| d.cut_ms) else {
        return Vec::new();
    };
    let mut rows: Vec<&DriftRow> = live
        .drift
        .iter()
        .filter(|d| d.cut_ms == last.cut_ms && d.model == last.model)
        .collect();
    rows.sort_by(|a, b| b.psi.total_cmp(&a.psi));
    rows
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn labels_of(o: &Outcome) -> Labels {
    Labels {
        segment: Segment::ALL
            .iter()
            .copied()
            .find(|s| s.name() == o.realized_segment)
            .unwrap_or(Segment::Dormant),
        purchased: o.purchased,
        churned: o.churned,
        spend_minor: o.spend_minor,
    }
}

/// The outcomes as model outputs (segment probabilities one-hot on the
/// predicted segment; uniform without one).
fn outputs_of(rows: &[&Outcome]) -> Outputs {
    let k = Segment::COUNT;
    let mut out = Outputs {
        segment_probs: Vec::with_capacity(rows.len() * k),
        purchase_probability: Vec::with_capacity(rows.len()),
        churn_probability: Vec::with_capacity(rows.len()),
        predicted_spend: Vec::with_capacity(rows.len()),
        segment_contributions: Vec::new(),
    };
    for o in rows {
        let at = Segment::ALL.iter().position(|s| s.name() == o.segment);
        out.segment_probs.extend((0..k).map(|j| match at {
            Some(a) => f32::from(u8::from(a == j)),
            None => 1.0 / k as f32,
        }));
        out.purchase_probability.push(o.purchase_probability);
        out.churn_probability.push(o.churn_probability);
        out.predicted_spend.push(o.predicted_spend);
    }
    out
}

/// Outcomes per (role, model version): champions first, then the others
/// by role and version (the order of the tables and of the figures'
/// colours).
fn by_model(outcomes: &[Outcome]) -> Vec<((String, String), Vec<&Outcome>)> {
    let mut m: BTreeMap<(bool, String, String), Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        let role = if o.role.is_empty() {
            "champion"
        } else {
            &o.role
        };
        m.entry((
            role != "champion",
            role.to_string(),
            o.model_version.clone(),
        ))
        .or_default()
        .push(o);
    }
    m.into_iter()
        .map(|((_, r, v), rows)| ((r, v), rows))
        .collect()
}

/// The live figures of `outcomes`.
pub fn summarize(outcomes: &[Outcome]) -> Live {
    let groups = by_model(outcomes);
    let mut live = Live {
        models: Vec::new(),
        cuts: Vec::new(),
        margins: Vec::new(),
        drift: Vec::new(),
    };
    for ((role, model), rows) in &groups {
        let purchased: Vec<bool> = rows.iter().map(|o| o.purchased).collect();
        let churned: Vec<bool> = rows.iter().map(|o| o.churned).collect();
        let p: Vec<f32> = rows.iter().map(|o| o.purchase_probability).collect();
        let c: Vec<f32> = rows.iter().map(|o| o.churn_probability).collect();
        let mean = |v: &[f32]| v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len().max(1) as f64;
        let rate = |v: &[bool]| v.iter().filter(|x| **x).count() as f64 / v.len().max(1) as f64;
        let spend: f64 = rows.iter().map(|o| f64::from(o.predicted_spend)).sum();
        let real: f64 = rows.iter().map(|o| o.spend_minor as f64).sum();
        live.models.push(ModelRow {
            model: model.clone(),
            role: role.clone(),
            outcomes: rows.len(),
            purchase_auc: metrics::auc(&p, &purchased),
            churn_auc: metrics::auc(&c, &churned),
            purchase_calibration: ratio(mean(&p), rate(&purchased)),
            spend_ratio: ratio(spend, real),
        });
        let mut cuts: BTreeMap<i64, Vec<&Outcome>> = BTreeMap::new();
        for o in rows {
            cuts.entry(o.cut_ms).or_default().push(o);
        }
        for (cut, at) in cuts {
            let y: Vec<bool> = at.iter().map(|o| o.purchased).collect();
            let s: Vec<f32> = at.iter().map(|o| o.purchase_probability).collect();
            let both = y.iter().any(|b| *b) && y.iter().any(|b| !*b);
            live.cuts.push(CutRow {
                model: model.clone(),
                cut_ms: cut,
                outcomes: at.len(),
                purchase_auc: if both { metrics::auc(&s, &y) } else { f64::NAN },
                predicted_rate: mean(&s),
                realized_rate: rate(&y),
            });
        }
    }
    // Margins on the (customer, cut) pairs both predicted: the champion
    // against each baseline; each shadow model against the champion.
    let champion = groups.iter().find(|((r, _), _)| r == "champion");
    if let Some(((_, champ), crows)) = champion {
        for ((role, model), rows) in &groups {
            let (challenger, reference, metrics) = match role.as_str() {
                "champion" => continue,
                SHADOW => (rows, crows, SHADOW_METRICS.as_slice()),
                _ => (crows, rows, BASELINE_METRICS.as_slice()),
            };
            for metric in metrics {
                if let Some((line, _)) = paired_margin(challenger, reference, metric) {
                    live.margins.push(MarginLine {
                        challenger: if role == SHADOW { model } else { champ }.clone(),
                        reference: if role == SHADOW { champ } else { model }.clone(),
                        ..line
                    });
                }
            }
        }
    }
    live
}

/// `role` of a shadow model's outcomes.
const SHADOW: &str = crate::pipeline::outcomes::SHADOW;
/// What the champion is compared with each baseline on.
const BASELINE_METRICS: [&str; 2] = ["purchase_auc", "churn_auc"];
/// What each shadow model is compared with the champion on (the baselines
/// predict no segment; shadows do).
const SHADOW_METRICS: [&str; 3] = ["purchase_auc", "churn_auc", "segment_macro_f1"];

/// `challenger` minus `reference` on `metric`, over the (customer, cut)
/// pairs both predicted, with its paired bootstrap interval (resampling
/// customers), and the number of pairs; `None` with fewer than two pairs.
/// The `challenger` and `reference` fields of the line are the versions of
/// the first outcome of each.
pub fn paired_margin(
    challenger: &[&Outcome],
    reference: &[&Outcome],
    metric: &str,
) -> Option<(MarginLine, usize)> {
    let index: BTreeMap<(&str, i64), &Outcome> = reference
        .iter()
        .map(|o| ((o.customer_id.as_str(), o.cut_ms), *o))
        .collect();
    let pairs: Vec<(&Outcome, &Outcome)> = challenger
        .iter()
        .filter_map(|o| {
            index
                .get(&(o.customer_id.as_str(), o.cut_ms))
                .map(|r| (*o, *r))
        })
        .collect();
    if pairs.len() < 2 {
        return None;
    }
    let a: Vec<&Outcome> = pairs.iter().map(|p| p.0).collect();
    let b: Vec<&Outcome> = pairs.iter().map(|p| p.1).collect();
    let labels: Vec<Labels> = a.iter().map(|o| labels_of(o)).collect();
    let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
    let customer: Vec<u32> = a
        .iter()
        .map(|o| {
            let n = ids.len() as u32;
            *ids.entry(o.customer_id.as_str()).or_insert(n)
        })
        .collect();
    let on = metrics::Judged {
        labels: &labels,
        customer: &customer,
        segments: Segment::COUNT,
    };
    let m = metrics::margin(
        &outputs_of(&a),
        &outputs_of(&b),
        &on,
        metric,
        metrics::RESAMPLES,
        7,
    );
    Some((
        MarginLine {
            challenger: a[0].model_version.clone(),
            reference: b[0].model_version.clone(),
            metric: metric.to_string(),
            difference: m.difference,
            low: m.low,
            high: m.high,
            verdict: m.verdict(true).to_string(),
        },
        pairs.len(),
    ))
}

/// What live evidence says of replacing the champion by a shadow model.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveDecision {
    /// The shadow model minus the champion on the promote metric.
    pub margin: MarginLine,
    /// (customer, cut) pairs both predicted and resolved.
    pub pairs: usize,
    /// Whether it may be promoted: enough pairs, and ahead (the interval
    /// above zero).
    pub promote: bool,
    /// Why, in words.
    pub reason: String,
}

/// Judges `shadow` against `champion` (model versions) on `metric` from the
/// live outcomes: promote only with at least `min_pairs` (customer, cut)
/// pairs both predicted and a difference whose 95 % paired bootstrap
/// interval lies above zero (a tie keeps the champion). `None` when the two
/// share fewer than two resolved snapshots.
pub fn live_decision(
    outcomes: &[Outcome],
    shadow: &str,
    champion: &str,
    metric: &str,
    min_pairs: usize,
) -> Option<LiveDecision> {
    let of =
        |v: &str| -> Vec<&Outcome> { outcomes.iter().filter(|o| o.model_version == v).collect() };
    let (margin, pairs) = paired_margin(&of(shadow), &of(champion), metric)?;
    let interval = format!(
        "{metric} {:+.4} [{:+.4}, {:+.4}] on {pairs} live outcomes",
        margin.difference, margin.low, margin.high
    );
    let (promote, reason) = if pairs < min_pairs {
        (
            false,
            format!("{interval}: fewer than train.live_min_outcomes = {min_pairs}"),
        )
    } else if margin.verdict == "ahead" {
        (true, format!("{interval}: ahead of champion {champion}"))
    } else {
        (
            false,
            format!("{interval}: {} champion {champion}", margin.verdict),
        )
    };
    Some(LiveDecision {
        margin,
        pairs,
        promote,
        reason,
    })
}

/// The live quality table in Markdown.
pub fn markdown(live: &Live) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| model | role | outcomes | purchase AUC | churn AUC | predicted / realized purchases | predicted / realized spend |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for m in &live.models {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {:.4} | {:.3} | {:.3} |",
            m.model,
            m.role,
            m.outcomes,
            m.purchase_auc,
            m.churn_auc,
            m.purchase_calibration,
            m.spend_ratio
        );
    }
    if !live.margins.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| challenger − reference | metric | difference [95% interval] | verdict |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- |");
        for m in &live.margins {
            let _ = writeln!(
                s,
                "| {} − {} | {} | {:+.4} [{:+.4}, {:+.4}] | {} |",
                m.challenger, m.reference, m.metric, m.difference, m.low, m.high, m.verdict
            );
        }
    }
    let latest = latest_drift(live);
    if let Some(top) = latest.first() {
        let _ = writeln!(s);
        let moved: Vec<String> = latest
            .iter()
            .filter(|d| d.psi >= crate::model::drift::PSI_MODERATE)
            .map(|d| format!("{} {:.3} ({})", d.feature, d.psi, psi_word(d.psi)))
            .collect();
        let _ = writeln!(
            s,
            "Drift of {} at the cut of {} ({} snapshots, PSI against the training reference): {}",
            top.model,
            day_of(top.cut_ms),
            top.snapshots,
            if moved.is_empty() {
                format!("nothing moved (largest: {} {:.3}).", top.feature, top.psi)
            } else {
                format!("{} moved: {}.", moved.len(), moved.join(", "))
            }
        );
    }
    s
}

/// The usual reading of a population stability index.
pub fn psi_word(psi: f64) -> &'static str {
    use crate::model::drift::{PSI_MAJOR, PSI_MODERATE};
    if psi >= PSI_MAJOR {
        "major"
    } else if psi >= PSI_MODERATE {
        "moderate"
    } else {
        "none"
    }
}

/// A cut time as its UTC day, `YYYY-MM-DD`.
fn day_of(cut_ms: i64) -> String {
    figures::date(figures::days(cut_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outcomes of a champion that ranks purchasers perfectly and a
    /// baseline that ranks them backwards, on the same customers.
    fn outcomes() -> Vec<Outcome> {
        let mut v = Vec::new();
        for i in 0..40 {
            let bought = i % 2 == 0;
            for (model, role, p) in [
                ("m1", "champion", if bought { 0.8 } else { 0.2 }),
                ("rfm_rules", "baseline", if bought { 0.3 } else { 0.6 }),
            ] {
                v.push(Outcome {
                    customer_id: format!("c{i}"),
                    cut_ms: 7 * 86_400_000 * (1 + i64::from(i % 3 == 0)) - 1,
                    horizon_ms: 30 * 86_400_000,
                    model_version: model.into(),
                    segment: if bought { "active_buyer" } else { "dormant" }.into(),
                    purchase_probability: p,
                    churn_probability: 1.0 - p,
                    predicted_spend: 100.0,
                    purchased: bought,
                    churned: !bought,
                    spend_minor: if bought { 200 } else { 0 },
                    realized_segment: if bought { "active_buyer" } else { "dormant" }.into(),
                    resolved_at_ms: 0,
                    role: role.into(),
                    feature_bins: Vec::new(),
                });
            }
        }
        v
    }

    #[test]
    fn the_table_puts_the_champion_first_and_its_margin_has_an_interval() {
        let o = outcomes();
        let live = summarize(&o);
        let names: Vec<&str> = live.models.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(names, ["m1", "rfm_rules"]);
        assert_eq!(live.models[0].purchase_auc, 1.0);
        assert_eq!(live.models[1].purchase_auc, 0.0);
        assert!((live.models[0].purchase_calibration - 1.0).abs() < 1e-6);
        assert!((live.models[0].spend_ratio - 1.0).abs() < 1e-9);
        let m = &live.margins[0];
        assert_eq!(
            (m.challenger.as_str(), m.reference.as_str()),
            ("m1", "rfm_rules")
        );
        assert_eq!(m.metric, "purchase_auc");
        assert!((m.difference - 1.0).abs() < 1e-9 && m.low > 0.5, "{m:?}");
        assert_eq!(m.verdict, "ahead");
        assert!(markdown(&live).contains("| m1 − rfm_rules | purchase_auc | +1.0000"));
        let mut again = o.clone();
        for x in &mut again {
            x.cut_ms += 21 * 86_400_000;
        }
        let both: Vec<Outcome> = o.iter().chain(&again).cloned().collect();
        let flows = flows(&both);
        assert_eq!(
            flows.get(&("active_buyer".to_string(), "active_buyer".to_string())),
            Some(&20),
            "{flows:?}"
        );
        let figures = figures(&o, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(figures.len(), 5);
        let page = html(&live, &figures, &flows);
        assert_eq!(page.matches("<svg").count(), 5);
        assert!(page.contains("<table id=\"margins\">"));
    }

    /// A shadow model is compared with the champion (shadow minus
    /// champion) on the pairs both predicted; live evidence promotes it only
    /// when ahead on enough pairs.
    #[test]
    fn a_shadow_is_promoted_on_live_evidence_only_when_ahead_on_enough_outcomes() {
        // The shadow ("s1") ranks like the champion reversed ranks: the
        // "baseline" rows of `outcomes` become a shadow's, the champion the
        // shadow's reference.
        let mut o = outcomes();
        for x in o.iter_mut().filter(|x| x.role == "baseline") {
            x.role = SHADOW.into();
            x.model_version = "s1".into();
        }
        let live = summarize(&o);
        let m = live
            .margins
            .iter()
            .find(|m| m.metric == "purchase_auc")
            .unwrap_or_else(|| panic!("{:?}", live.margins));
        assert_eq!((m.challenger.as_str(), m.reference.as_str()), ("s1", "m1"));
        assert_eq!(m.verdict, "behind");
        assert!(live.margins.iter().any(|m| m.metric == "segment_macro_f1"));
        // Behind: kept.
        let d =
            live_decision(&o, "s1", "m1", "purchase_auc", 10).unwrap_or_else(|| panic!("no pairs"));
        assert_eq!(d.pairs, 40);
        assert!(!d.promote && d.reason.contains("behind"), "{}", d.reason);
        // The other way round (the champion judged as the shadow): ahead,
        // but promoted only with enough pairs.
        let d =
            live_decision(&o, "m1", "s1", "purchase_auc", 10).unwrap_or_else(|| panic!("no pairs"));
        assert!(d.promote && d.reason.contains("ahead"), "{}", d.reason);
        let d =
            live_decision(&o, "m1", "s1", "purchase_auc", 41).unwrap_or_else(|| panic!("no pairs"));
        assert!(
            !d.promote && d.reason.contains("fewer than"),
            "{}",
            d.reason
        );
        // Equal predictions: a tie keeps the champion.
        let mut tie = o.clone();
        for x in tie.iter_mut().filter(|x| x.model_version == "s1") {
            x.purchase_probability = if x.purchased { 0.8 } else { 0.2 };
        }
        let d = live_decision(&tie, "s1", "m1", "purchase_auc", 10)
            .unwrap_or_else(|| panic!("no pairs"));
        assert!(!d.promote && d.reason.contains("tie"), "{}", d.reason);
        // No shared snapshots: no decision.
        assert!(live_decision(&o, "s9", "m1", "purchase_auc", 10).is_none());
    }

    /// Drift per cut from the outcomes' feature bins and predictions
    /// against the model's reference; the table names what moved, the page
    /// draws it.
    #[test]
    fn drift_names_the_features_that_moved() {
        use crate::model::drift::Reference;
        let names: Vec<String> = vec!["recency".into(), "tenure".into()];
        // Reference: both features uniform over 0..100.
        let rows: Vec<f32> = (0..100).flat_map(|i| [i as f32, i as f32]).collect();
        let p: Vec<f32> = (0..100)
            .map(|i| if i % 2 == 0 { 0.8 } else { 0.2 })
            .collect();
        let outputs = Outputs {
            segment_probs: Vec::new(),
            purchase_probability: p.clone(),
            churn_probability: p.iter().map(|x| 1.0 - x).collect(),
            predicted_spend: vec![100.0; 100],
            segment_contributions: Vec::new(),
        };
        let r = Reference::fit(&rows, &names, &outputs);
        // Live: recency spread as in training at the first cut, all in its
        // top bin at the second; tenure spread throughout.
        let mut o = outcomes();
        for (i, x) in o.iter_mut().filter(|x| x.role == "champion").enumerate() {
            let late = x.cut_ms > 7 * 86_400_000;
            let v = (i * 100 / 40) as f32;
            let recency = if late { 99.0 } else { v };
            x.feature_bins = [recency, v]
                .iter()
                .map(|v| r.features[0].bin(*v) as u32)
                .collect();
        }
        let refs = BTreeMap::from([("m1".to_string(), r)]);
        let mut live = summarize(&o);
        live.drift = drift(&o, &refs);
        let cuts = o
            .iter()
            .map(|x| x.cut_ms)
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(live.drift.len(), cuts.len() * 5);
        let latest = latest_drift(&live);
        assert_eq!(latest[0].feature, "recency");
        assert!(latest[0].psi > crate::model::drift::PSI_MAJOR, "{latest:?}");
        let text = markdown(&live);
        // Largest first (tenure, sampled unevenly at the later cut, moves
        // a little too).
        assert!(text.contains("moved: recency 8."), "{text}");
        let figures = figures(&o, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(figures.len(), 6);
        let page = html(&live, &figures, &flows(&o));
        assert!(page.contains("<table id=\"drift\">"));
        assert_eq!(page.matches("<svg").count(), 6);
    }
}
