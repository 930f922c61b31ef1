//! The live quality report (`segstream report`): the outcomes the pipeline
//! published (`output.outcomes_topic`), per model version and cut, as a
//! table (champion against the baselines, with paired bootstrap intervals)
//! and as one self-contained HTML page of figures drawn with `plotters`:
//! live AUC and calibration per cut, a reliability diagram, a gains chart,
//! realized rates per predicted segment, and the champion's segment flows
//! between cuts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::backend::SVGBackend;
use plotters::chart::{ChartBuilder, SeriesLabelPosition};
use plotters::drawing::IntoDrawingArea;
use plotters::element::{Circle, PathElement, Rectangle};
use plotters::series::LineSeries;
use plotters::style::{Color, RGBColor, BLACK, WHITE};

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
    /// Champion minus each baseline, on the customers and cuts both
    /// predicted (paired bootstrap over customers).
    pub margins: Vec<MarginLine>,
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

/// The colour of the `i`-th model of [`by_model`].
fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// The live figures of `outcomes`.
pub fn summarize(outcomes: &[Outcome]) -> Live {
    let groups = by_model(outcomes);
    let mut live = Live {
        models: Vec::new(),
        cuts: Vec::new(),
        margins: Vec::new(),
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
    s
}

/// A figure: its file name, title and SVG.
#[derive(Debug, Clone)]
pub struct Figure {
    /// File name (`<name>.svg`).
    pub name: &'static str,
    /// Title.
    pub title: String,
    /// The SVG document.
    pub svg: String,
}

type Drawn = Result<(), Box<dyn std::error::Error>>;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn days(ms: i64) -> f64 {
    ms as f64 / 86_400_000.0
}

/// A day number (days since the epoch) as `YYYY-MM-DD`.
fn date(days: f64) -> String {
    let secs = (days * 86_400.0).max(0.0) as u64;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .take(10)
        .collect()
}

/// A chart of one line per model (in [`by_model`]'s order and colours).
struct Lines<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    /// Dates on the x axis (days since the epoch) instead of numbers.
    dates: bool,
    /// A grey reference line.
    reference: [(f64, f64); 2],
    /// Points marked on the lines.
    markers: bool,
    legend: SeriesLabelPosition,
}

impl Lines<'_> {
    /// Draws `series` (model, points) as SVG.
    fn draw(
        &self,
        series: &[(String, Vec<(f64, f64)>)],
    ) -> Result<String, Box<dyn std::error::Error>> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (640, 360)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(self.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(48)
                .build_cartesian_2d(self.x.clone(), self.y.clone())?;
            let as_date = |d: &f64| date(*d);
            let mut mesh = chart.configure_mesh();
            mesh.x_desc(self.x_desc).y_desc(self.y_desc);
            if self.dates {
                mesh.x_labels(6).x_label_formatter(&as_date);
            }
            mesh.draw()?;
            chart.draw_series(LineSeries::new(self.reference, BLACK.mix(0.3)))?;
            for (i, (model, points)) in series.iter().enumerate() {
                let color = colour(i);
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(model.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                if self.markers {
                    chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
                }
            }
            chart
                .configure_series_labels()
                .position(self.legend.clone())
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .draw()?;
            root.present()?;
        }
        Ok(svg)
    }
}

/// A line per model over the cuts (`value` of each cut row).
fn per_cut(
    live: &Live,
    title: &str,
    y_desc: &str,
    y: std::ops::Range<f64>,
    value: impl Fn(&CutRow) -> f64,
    reference: f64,
) -> Result<String, Box<dyn std::error::Error>> {
    let (lo, hi) = live.cuts.iter().fold((f64::MAX, f64::MIN), |(a, b), c| {
        (a.min(days(c.cut_ms)), b.max(days(c.cut_ms)))
    });
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    let series: Vec<(String, Vec<(f64, f64)>)> = live
        .models
        .iter()
        .map(|m| {
            let points = live
                .cuts
                .iter()
                .filter(|c| c.model == m.model)
                .map(|c| (days(c.cut_ms), value(c)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            (m.model.clone(), points)
        })
        .collect();
    Lines {
        title,
        x_desc: "cut (UTC day)",
        y_desc,
        x: lo..hi,
        y,
        dates: true,
        reference: [(lo, reference), (hi, reference)],
        markers: true,
        legend: SeriesLabelPosition::UpperRight,
    }
    .draw(&series)
}

/// Reliability diagram: per model, outcomes in ten bins of predicted
/// purchase probability, mean prediction against realized rate.
fn reliability(outcomes: &[Outcome]) -> Result<String, Box<dyn std::error::Error>> {
    let series: Vec<(String, Vec<(f64, f64)>)> = by_model(outcomes)
        .into_iter()
        .map(|((_, model), rows)| {
            let mut bins = [(0f64, 0f64, 0usize); 10];
            for o in rows {
                let p = f64::from(o.purchase_probability.clamp(0.0, 1.0));
                let b = ((p * 10.0) as usize).min(9);
                bins[b].0 += p;
                bins[b].1 += f64::from(u8::from(o.purchased));
                bins[b].2 += 1;
            }
            let points = bins
                .iter()
                .filter(|b| b.2 > 0)
                .map(|b| (b.0 / b.2 as f64, b.1 / b.2 as f64))
                .collect();
            (model, points)
        })
        .collect();
    Lines {
        title: "Reliability: predicted against realized purchase rate",
        x_desc: "mean predicted purchase probability (bin)",
        y_desc: "realized purchase rate",
        x: 0.0..1.0,
        y: 0.0..1.0,
        dates: false,
        reference: [(0.0, 0.0), (1.0, 1.0)],
        markers: true,
        legend: SeriesLabelPosition::UpperLeft,
    }
    .draw(&series)
}

/// Gains: customers ranked by predicted purchase probability, the share of
/// all purchasers found in the top share of customers, per model.
fn gains(outcomes: &[Outcome]) -> Result<String, Box<dyn std::error::Error>> {
    let series: Vec<(String, Vec<(f64, f64)>)> = by_model(outcomes)
        .into_iter()
        .map(|((_, model), rows)| {
            let mut ranked: Vec<(f32, bool)> = rows
                .iter()
                .map(|o| (o.purchase_probability, o.purchased))
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            let total = ranked.iter().filter(|r| r.1).count().max(1) as f64;
            let n = ranked.len().max(1) as f64;
            let step = (ranked.len() / 100).max(1);
            let mut found = 0usize;
            let mut points = vec![(0.0, 0.0)];
            for (j, r) in ranked.iter().enumerate() {
                found += usize::from(r.1);
                if (j + 1) % step == 0 || j + 1 == ranked.len() {
                    points.push(((j + 1) as f64 / n, found as f64 / total));
                }
            }
            (model, points)
        })
        .collect();
    Lines {
        title: "Gains: purchasers found among the top-ranked customers",
        x_desc: "share of customers, highest predicted first",
        y_desc: "share of purchasers",
        x: 0.0..1.0,
        y: 0.0..1.0,
        dates: false,
        reference: [(0.0, 0.0), (1.0, 1.0)],
        markers: false,
        legend: SeriesLabelPosition::LowerRight,
    }
    .draw(&series)
}

/// The champion's realized purchase and churn rates per predicted segment.
fn by_segment(outcomes: &[Outcome]) -> Result<String, Box<dyn std::error::Error>> {
    let champion: Vec<&Outcome> = outcomes.iter().filter(|o| o.role == "champion").collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let names: Vec<&str> = Segment::ALL.iter().map(|s| s.name()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Realized rates by predicted segment (champion)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..names.len() as f64, 0f64..1f64)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 {
                    names.get(i).map(|s| s.to_string()).unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("share of the segment's outcomes")
            .draw()?;
        for (k, (what, color)) in [("purchased", PALETTE[0]), ("churned", PALETTE[3])]
            .into_iter()
            .enumerate()
        {
            let bars: Vec<Rectangle<(f64, f64)>> = names
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let rows: Vec<&&Outcome> =
                        champion.iter().filter(|o| o.segment == *name).collect();
                    if rows.is_empty() {
                        return None;
                    }
                    let hit = rows
                        .iter()
                        .filter(|o| if k == 0 { o.purchased } else { o.churned })
                        .count() as f64
                        / rows.len() as f64;
                    let x0 = i as f64 + 0.1 + 0.4 * k as f64;
                    Some(Rectangle::new([(x0, 0.0), (x0 + 0.4, hit)], color.filled()))
                })
                .collect();
            chart.draw_series(bars)?.label(what).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
            });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// Every figure of the report.
pub fn figures(
    outcomes: &[Outcome],
    live: &Live,
) -> Result<Vec<Figure>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    let mut add = |name: &'static str,
                   title: &str,
                   svg: Result<String, Box<dyn std::error::Error>>|
     -> Drawn {
        out.push(Figure {
            name,
            title: title.to_string(),
            svg: svg?,
        });
        Ok(())
    };
    add(
        "auc_per_cut",
        "Live purchase AUC per cut",
        per_cut(
            live,
            "Live purchase AUC per cut",
            "purchase AUC",
            0.0..1.0,
            |c| c.purchase_auc,
            0.5,
        ),
    )?;
    add(
        "calibration_per_cut",
        "Calibration per cut",
        per_cut(
            live,
            "Predicted / realized purchase rate per cut",
            "predicted / realized",
            0.0..2.5,
            |c| ratio(c.predicted_rate, c.realized_rate),
            1.0,
        ),
    )?;
    add("reliability", "Reliability diagram", reliability(outcomes))?;
    add("gains", "Gains chart", gains(outcomes))?;
    add(
        "segments",
        "Realized rates by predicted segment",
        by_segment(outcomes),
    )?;
    Ok(out)
}

/// The champion's segment flows between consecutive cuts: (from, to) →
/// customers.
pub fn flows(outcomes: &[Outcome]) -> BTreeMap<(String, String), usize> {
    let mut by_customer: BTreeMap<&str, Vec<(i64, &str)>> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.role == "champion") {
        by_customer
            .entry(&o.customer_id)
            .or_default()
            .push((o.cut_ms, &o.segment));
    }
    let mut flows = BTreeMap::new();
    for v in by_customer.values_mut() {
        v.sort_unstable();
        for w in v.windows(2) {
            *flows
                .entry((w[0].1.to_string(), w[1].1.to_string()))
                .or_insert(0) += 1;
        }
    }
    flows
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The report page: the table, the figures inline, the flows.
pub fn html(live: &Live, figures: &[Figure], flows: &BTreeMap<(String, String), usize>) -> String {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>segstream live quality</title>\n\
         <style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}\
         figure{display:inline-block;margin:0.5em}figcaption{font-size:90%;color:#444}</style></head><body>\n\
         <h1>segstream: live quality</h1>\n<p>Every prediction checked against what the customer then did \
         (output.outcomes_topic), per model; baselines and shadow models are scored at the same snapshots.</p>\n",
    );
    s.push_str("<h2>Models</h2>\n<table id=\"models\"><tr><th>model</th><th>role</th><th>outcomes</th><th>purchase AUC</th><th>churn AUC</th><th>predicted / realized purchases</th><th>predicted / realized spend</th></tr>\n");
    for m in &live.models {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            escape(&m.model),
            escape(&m.role),
            m.outcomes,
            m.purchase_auc,
            m.churn_auc,
            m.purchase_calibration,
            m.spend_ratio
        );
    }
    s.push_str("</table>\n");
    if !live.margins.is_empty() {
        s.push_str("<table id=\"margins\"><tr><th>challenger − reference</th><th>metric</th><th>difference [95% interval]</th><th>verdict</th></tr>\n");
        for m in &live.margins {
            let _ = writeln!(
                s,
                "<tr><td>{} − {}</td><td>{}</td><td>{:+.4} [{:+.4}, {:+.4}]</td><td>{}</td></tr>",
                escape(&m.challenger),
                escape(&m.reference),
                m.metric,
                m.difference,
                m.low,
                m.high,
                m.verdict
            );
        }
        s.push_str("</table>\n");
    }
    s.push_str("<h2>Figures</h2>\n");
    for f in figures {
        let _ = writeln!(
            s,
            "<figure id=\"{}\" class=\"figure\">{}<figcaption>{}</figcaption></figure>",
            f.name,
            f.svg,
            escape(&f.title)
        );
    }
    s.push_str("<h2>Segment flows between cuts (champion)</h2>\n<table id=\"flows\"><tr><th>from</th><th>to</th><th>customers</th></tr>\n");
    for ((from, to), n) in flows {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>",
            escape(from),
            escape(to)
        );
    }
    s.push_str("</table>\n</body></html>\n");
    s
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
}
