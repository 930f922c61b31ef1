//! The report's figures, drawn with `plotters` as SVG.

use plotters::backend::SVGBackend;
use plotters::chart::{ChartBuilder, SeriesLabelPosition};
use plotters::drawing::IntoDrawingArea;
use plotters::element::{Circle, PathElement, Rectangle};
use plotters::series::LineSeries;
use plotters::style::{Color, RGBColor, BLACK, WHITE};

use super::{by_model, ratio, CutRow, Live};
use crate::event::proto::Outcome;
use crate::model::Segment;

/// The colour of the `i`-th model of [`by_model`].
fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
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

pub(super) fn days(ms: i64) -> f64 {
    ms as f64 / 86_400_000.0
}

/// A day number (days since the epoch) as `YYYY-MM-DD`.
pub(super) fn date(days: f64) -> String {
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
    if !live.drift.is_empty() {
        add(
            "drift",
            "Drift of the champion's inputs and outputs per cut (PSI)",
            drift(live),
        )?;
    }
    Ok(out)
}

/// Features shown in the drift figure: the ones that moved most.
const DRIFT_LINES: usize = 6;

/// The champion's population stability index per cut for the features
/// (and outputs) that moved most, against the 0.25 "major shift" line.
fn drift(live: &Live) -> Result<String, Box<dyn std::error::Error>> {
    let mut worst: std::collections::BTreeMap<&str, f64> = std::collections::BTreeMap::new();
    for d in live.drift.iter().filter(|d| d.psi.is_finite()) {
        let w = worst.entry(d.feature.as_str()).or_insert(0.0);
        *w = w.max(d.psi);
    }
    let mut names: Vec<(&str, f64)> = worst.into_iter().collect();
    names.sort_by(|a, b| b.1.total_cmp(&a.1));
    names.truncate(DRIFT_LINES);
    let top = names.first().map_or(0.0, |n| n.1);
    let (lo, hi) = live.drift.iter().fold((f64::MAX, f64::MIN), |(a, b), d| {
        (a.min(days(d.cut_ms)), b.max(days(d.cut_ms)))
    });
    let series: Vec<(String, Vec<(f64, f64)>)> = names
        .iter()
        .map(|(name, _)| {
            let points = live
                .drift
                .iter()
                .filter(|d| d.feature == *name && d.psi.is_finite())
                .map(|d| (days(d.cut_ms), d.psi))
                .collect();
            (name.to_string(), points)
        })
        .collect();
    let major = crate::model::drift::PSI_MAJOR;
    Lines {
        title: "Drift per cut: PSI against the training reference",
        x_desc: "cut (UTC day)",
        y_desc: "population stability index",
        x: (lo - 1.0)..(hi + 1.0),
        y: 0.0..(top * 1.15).max(2.0 * major),
        dates: true,
        reference: [(lo - 1.0, major), (hi + 1.0, major)],
        markers: true,
        // Drift falls toward the training period (the latest cuts).
        legend: SeriesLabelPosition::UpperRight,
    }
    .draw(&series)
}
