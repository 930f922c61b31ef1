//! The risk benchmark: precision and recall of each risk rule on generated
//! data with ground truth (the realistic world plus the abuse overlay of
//! `generate::abuse`), replayed through `CustomerState::record` and
//! `decide::risk` exactly as the pipeline evaluates them. Offline: no Kafka.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use super::BenchResult;
use crate::config::Config;
use crate::decide::risk::{self, Rule};
use crate::generate::abuse::{abuse, AbuseConfig};
use crate::generate::{history, GeneratorConfig};
use crate::state::CustomerState;

/// One rule's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RuleScore {
    /// The rule.
    pub rule: &'static str,
    /// Actors whose pattern should raise it.
    pub positives: usize,
    /// Customers it was raised for at least once.
    pub flagged: usize,
    /// Of those, actors that should raise it.
    pub true_positives: usize,
    /// true positives / flagged (1 when nothing was flagged).
    pub precision: f64,
    /// true positives / positives.
    pub recall: f64,
}

/// Results of the risk benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct RiskBench {
    /// Ordinary customers in the world (negatives unless they match a pattern).
    pub customers: usize,
    /// Actors of the abuse overlay.
    pub actors: usize,
    /// Events replayed.
    pub events: usize,
    /// Days of history.
    pub days: u32,
    /// Per rule.
    pub rules: Vec<RuleScore>,
    /// Replay with the rules, events per second.
    pub events_per_second: f64,
}

/// Runs the benchmark on `customers` ordinary customers over `days`.
pub fn risk(config: &Config, customers: usize, days: u32) -> BenchResult<RiskBench> {
    let gen = GeneratorConfig {
        customers,
        days,
        seed: 17,
        ..GeneratorConfig::default()
    };
    let scale = (customers / 200).max(1);
    let overlay = abuse(&AbuseConfig {
        seed: 17,
        start_ms: gen.start_ms,
        days,
        bots: 4 * scale,
        rings: scale,
        ring_size: 5,
        rushes: 4 * scale,
        bursts: 4 * scale,
        ordinary_visits: true,
    });
    let mut events: Vec<_> = history(&gen).collect();
    events.extend(overlay.events.iter().cloned());
    events.sort_by_key(|e| e.event_time_ms);
    let limits = config.state.limits().state;
    let cfg = &config.risk;
    let mut states: HashMap<String, (CustomerState, u8)> = HashMap::new();
    let mut ever: HashMap<String, u8> = HashMap::new();
    let started = Instant::now();
    for e in &events {
        let (state, flags) = states.entry(e.customer_id.clone()).or_default();
        state.record(e, limits);
        let findings = risk::evaluate(
            cfg,
            state.recent(),
            &state.lifetime.products,
            e.event_time_ms,
        );
        let (next, _) = risk::apply(cfg, *flags, findings);
        *flags = next;
        if next != 0 {
            *ever.entry(e.customer_id.clone()).or_default() |= next;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut rules = Vec::new();
    for rule in Rule::ALL {
        if !cfg.rules.contains(&rule) {
            continue;
        }
        let positives: Vec<&String> = overlay
            .truth
            .iter()
            .filter(|(_, r)| r.contains(&rule))
            .map(|(id, _)| id)
            .collect();
        let flagged: Vec<&String> = ever
            .iter()
            .filter(|(_, f)| **f & rule.bit() != 0)
            .map(|(id, _)| id)
            .collect();
        let tp = flagged.iter().filter(|id| positives.contains(id)).count();
        rules.push(RuleScore {
            rule: rule.as_str(),
            positives: positives.len(),
            flagged: flagged.len(),
            true_positives: tp,
            precision: if flagged.is_empty() {
                1.0
            } else {
                tp as f64 / flagged.len() as f64
            },
            recall: tp as f64 / positives.len().max(1) as f64,
        });
    }
    Ok(RiskBench {
        customers,
        actors: overlay.truth.len(),
        events: events.len(),
        days,
        rules,
        events_per_second: events.len() as f64 / seconds.max(1e-9),
    })
}

/// The risk results as a Markdown table.
pub fn risk_markdown(b: &RiskBench) -> String {
    let mut s = format!(
        "{} ordinary customers and {} abuse actors over {} days ({} events); rules replayed at {:.0} events/s.\n\n\
         | rule | actors with the pattern | flagged | true positives | precision | recall |\n\
         | --- | --- | --- | --- | --- | --- |\n",
        b.customers, b.actors, b.days, b.events, b.events_per_second
    );
    for r in &b.rules {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} |\n",
            r.rule, r.positives, r.flagged, r.true_positives, r.precision, r.recall
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules on generated data with ground truth (a regression check of
    /// their quality, not a timing).
    #[test]
    fn every_rule_finds_its_pattern_without_flagging_the_world() {
        let b = risk(&Config::default(), 1000, 30).unwrap();
        for r in &b.rules {
            assert!(r.positives > 0, "{r:?}");
            assert!(r.recall >= 0.9, "{r:?}");
            assert!(r.precision >= 0.8, "{r:?}");
        }
    }
}
