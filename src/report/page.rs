//! The report page: one self-contained HTML file with the tables, the
//! figures inline and the segment flows.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Figure, Live};
use crate::event::proto::Outcome;

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
    let latest = super::latest_drift(live);
    if let Some(top) = latest.first() {
        let _ = writeln!(
            s,
            "<h2>Drift at the latest cut</h2>\n<p>{} at {}, {} snapshots: population stability index of each input and output against the model's training reference (0.1 moderate, 0.25 major).</p>\n<table id=\"drift\"><tr><th>feature</th><th>PSI</th><th>shift</th></tr>",
            escape(&top.model),
            super::day_of(top.cut_ms),
            top.snapshots
        );
        for d in latest.iter().take(10) {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
                escape(&d.feature),
                d.psi,
                super::psi_word(d.psi)
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
