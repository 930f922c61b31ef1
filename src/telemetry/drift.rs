//! Drift at the live-outcome snapshots: the served model's customer
//! features and outputs at the latest cut, against the distributions
//! recorded in its manifest at training (population stability index per
//! feature and output, [`psi`]; the bins are `crate::model::drift`'s).
//!
//! One tally per instance: the latest cut of the served model, over every
//! partition this instance holds. Labels stay bounded: the customer
//! features and the three outputs. The caller bins (this module knows no
//! model: it gets each quantity's reference shares and each snapshot's bins).

use std::sync::{Arc, Mutex};

use prometheus::core::Collector;
use prometheus::{Gauge, GaugeVec, IntGauge, Opts};

/// Snapshots of a cut before its indexes are exported (fewer give noise,
/// not drift).
pub const MIN_DRIFT_SNAPSHOTS: u64 = 200;

/// A share below this counts as this in [`psi`] (an empty bin would make
/// the index infinite).
const FLOOR: f64 = 1e-4;

/// Population stability index of `counts` (one per bin) against the
/// reference `shares`: the sum over bins of (actual − expected) ×
/// ln(actual / expected), each share at least 1e-4. 0 for identical
/// distributions; NaN without counts.
pub fn psi(shares: &[f64], counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 || shares.len() != counts.len() {
        return f64::NAN;
    }
    shares
        .iter()
        .zip(counts)
        .map(|(e, c)| {
            let (e, a) = (e.max(FLOOR), (*c as f64 / total as f64).max(FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// One feature or output of the reference: its name and each bin's share.
#[derive(Debug, Clone, Copy)]
pub struct Quantity<'a> {
    /// The feature's or output's name.
    pub name: &'a str,
    /// The reference's share in each bin.
    pub shares: &'a [f64],
}

/// What one batch of scored snapshots adds to the tally.
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    /// The served model's version.
    pub version: &'a str,
    /// The cut.
    pub cut_ms: i64,
    /// The reference's features, then its outputs.
    pub quantities: &'a [Quantity<'a>],
    /// Per snapshot, the bin of each quantity (in `quantities`' order).
    pub bins: &'a [Vec<u8>],
}

#[derive(Debug)]
struct Tally {
    version: String,
    cut_ms: i64,
    snapshots: u64,
    /// Per feature then per output: counts per bin.
    counts: Vec<Vec<u64>>,
}

/// The drift metrics (part of [`super::Metrics`]).
#[derive(Debug, Clone)]
pub struct DriftMetrics {
    /// PSI of each customer feature and output at the latest cut.
    pub psi: GaugeVec,
    /// The cut the indexes are of (seconds since the epoch).
    pub cut: Gauge,
    /// Snapshots counted at that cut.
    pub snapshots: IntGauge,
    tally: Arc<Mutex<Option<Tally>>>,
}

impl DriftMetrics {
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        Ok(DriftMetrics {
            psi: GaugeVec::new(
                Opts::new(
                    "segstream_drift_psi",
                    "Population stability index of each customer feature and output of the served model at the latest live-outcome cut, against its training reference (0.1: moderate shift, 0.25: major).",
                ),
                &["feature"],
            )?,
            cut: Gauge::new(
                "segstream_drift_cut_timestamp_seconds",
                "The live-outcome cut segstream_drift_psi is of.",
            )?,
            snapshots: IntGauge::new(
                "segstream_drift_snapshots",
                "Snapshots counted in segstream_drift_psi.",
            )?,
            tally: Arc::new(Mutex::new(None)),
        })
    }

    /// Forgets the indexes unless they are of `version`: the served model
    /// changed to one without a drift reference (an index of the model
    /// before would otherwise stay exported, and alert, for good).
    pub fn served_without_reference(&self, version: &str) {
        let mut guard = match self.tally.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if guard.as_ref().is_some_and(|t| t.version != version) {
            *guard = None;
            self.clear();
        }
    }

    fn clear(&self) {
        self.psi.reset();
        self.cut.set(0.0);
        self.snapshots.set(0);
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.psi.clone()),
            Box::new(self.cut.clone()),
            Box::new(self.snapshots.clone()),
        ]
    }

    /// Counts a batch of the served model's scored snapshots, and exports
    /// the indexes of its cut once it has [`MIN_DRIFT_SNAPSHOTS`]. A later
    /// cut (or another model) starts a new tally; snapshots of an earlier
    /// cut than the tally's are left out.
    pub fn observe(&self, s: Scored<'_>) {
        let mut guard = match self.tally.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let fresh = match guard.as_ref() {
            None => true,
            Some(t) if t.version != s.version => true,
            Some(t) if s.cut_ms < t.cut_ms => return,
            Some(t) => s.cut_ms > t.cut_ms,
        };
        if fresh {
            if guard.as_ref().is_some_and(|t| t.version != s.version) {
                // Another model: the last one's indexes no longer apply.
                self.clear();
            }
            *guard = Some(Tally {
                version: s.version.to_string(),
                cut_ms: s.cut_ms,
                snapshots: 0,
                counts: s
                    .quantities
                    .iter()
                    .map(|q| vec![0; q.shares.len()])
                    .collect(),
            });
        }
        let Some(t) = guard.as_mut() else {
            return;
        };
        for bins in s.bins.iter().filter(|b| b.len() == s.quantities.len()) {
            t.snapshots += 1;
            for (counts, b) in t.counts.iter_mut().zip(bins) {
                if let Some(c) = counts.get_mut(usize::from(*b)) {
                    *c += 1;
                }
            }
        }
        if t.snapshots < MIN_DRIFT_SNAPSHOTS {
            return;
        }
        for (q, counts) in s.quantities.iter().zip(&t.counts) {
            self.psi
                .with_label_values(&[q.name])
                .set(psi(q.shares, counts));
        }
        self.cut.set(t.cut_ms as f64 / 1000.0);
        self.snapshots.set(t.snapshots as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_on_the_reference_and_grows_with_a_shift() {
        let shares = [0.25; 4];
        assert!(psi(&shares, &[25, 25, 25, 25]).abs() < 1e-12);
        let nudged = psi(&shares, &[30, 25, 25, 20]);
        assert!(nudged > 0.0 && nudged < 0.1, "{nudged}");
        assert!(psi(&shares, &[0, 0, 10, 90]) > 0.25);
        assert!(psi(&shares, &[0; 4]).is_nan());
        assert!(psi(&shares, &[1, 2]).is_nan());
    }

    #[test]
    fn the_latest_cut_of_the_served_model_is_exported_once_counted_enough() {
        let even = [0.5, 0.5];
        let quantities = [
            Quantity {
                name: "a",
                shares: &even,
            },
            Quantity {
                name: "b",
                shares: &even,
            },
        ];
        let m = DriftMetrics::new().unwrap_or_else(|e| panic!("{e}"));
        // As in the reference: half in each bin; then "a" all in bin 1.
        let same: Vec<Vec<u8>> = (0..1000u32).map(|i| vec![(i % 2) as u8; 2]).collect();
        let moved: Vec<Vec<u8>> = (0..1000u32).map(|i| vec![1, (i % 2) as u8]).collect();
        let scored = |cut_ms, bins| Scored {
            version: "m1",
            cut_ms,
            quantities: &quantities,
            bins,
        };
        m.observe(scored(7_000, &same[..100]));
        assert_eq!(m.snapshots.get(), 0, "too few yet");
        m.observe(scored(7_000, &same[100..]));
        assert_eq!(m.snapshots.get(), 1000);
        assert!(m.psi.with_label_values(&["a"]).get().abs() < 1e-9);
        // A later cut replaces the tally; an earlier one is left out.
        m.observe(scored(14_000, &moved));
        m.observe(scored(7_000, &same));
        assert_eq!(m.cut.get(), 14.0);
        assert_eq!(m.snapshots.get(), 1000);
        assert!(m.psi.with_label_values(&["a"]).get() > 0.25);
        assert!(m.psi.with_label_values(&["b"]).get().abs() < 1e-9);
        // The same model again keeps them; another model without a
        // reference clears them.
        m.served_without_reference("m1");
        assert_eq!(m.snapshots.get(), 1000);
        m.served_without_reference("m2");
        assert_eq!(m.snapshots.get(), 0);
        let exported: usize = m.psi.collect().iter().map(|f| f.get_metric().len()).sum();
        assert_eq!(exported, 0, "no index of the model before");
    }
}
