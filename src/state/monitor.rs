//! Live outcomes, the state's part: prediction snapshots taken at fixed
//! event-time cut points and resolved once their horizon has passed.
//!
//! A cut is the last millisecond of every `every`-th UTC day (cut times are
//! `k * every - 1` since the epoch: the same calendar whichever partition,
//! instance or restart takes them). When a partition's watermark passes a
//! cut `t` (no event at or before `t` can still be applied), every customer
//! of the evaluation population, active in `(t - lookback, t]` (the
//! trainer's rule), is captured with their state as of `t`. A customer
//! whose first event after `t` arrives while the watermark is still before
//! `t` (within the allowed lateness) is captured just before that event is
//! applied. Either way the capture is the state with every event at or
//! before `t` and none after it: what the trainer's replay featurizes at
//! `t`. The pipeline scores the captures in the same cycle and keeps each
//! prediction in the customer's state ([`Snapshot`], so in the changelog).
//!
//! When the watermark passes `t + horizon`, a snapshot is resolved from the
//! customer's daily buckets of `(t, t + horizon]` (whole days: the cut is a
//! day's end and the horizon whole days) and leaves the state: the outcome
//! goes out in the transaction that removes it, so a crash, a rebalance or
//! a restore neither loses nor repeats one. `snapshot_through_ms` (the
//! latest cut a customer was captured at) makes capture idempotent when a
//! restored partition's watermark passes a cut again.

use super::{day_of, CustomerState};

pub use crate::config::MonitorRules;

/// Whether `state` belongs to the population at cut `t` and has not been
/// captured there: active in `(t - lookback, t]`, nothing after `t`.
pub fn captures(rules: &MonitorRules, state: &CustomerState, t: i64) -> bool {
    state.last_event_ms > 0
        && state.last_event_ms <= t
        && state.last_event_ms > t.saturating_sub(rules.lookback_ms)
        && state.snapshot_through_ms < t
}

/// A prediction as of a cut, kept in the customer's state until resolved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// The cut time (ms).
    pub cut_ms: i64,
    /// The model version that predicted ("" until scored).
    pub model_version: String,
    /// The predicted (most probable) segment.
    pub segment: String,
    /// Predicted probability of a purchase in the horizon.
    pub purchase_probability: f32,
    /// Predicted probability of no activity in the horizon.
    pub churn_probability: f32,
    /// Predicted spend in the horizon (minor units).
    pub predicted_spend: f32,
    /// Whether the customer had purchased at or before the cut (the
    /// taxonomy's `at_risk`/`dormant` split).
    pub purchased_before: bool,
    /// Whether the prediction is filled in (captured snapshots are scored
    /// in the cycle that captures them).
    pub scored: bool,
    /// Who predicted: "" for the served model, `baseline` or `shadow`.
    pub role: String,
    /// The served model's customer features as of the cut, binned against
    /// its drift reference ([`crate::model::drift::Reference::feature_bins`];
    /// empty without one, and for the other roles).
    pub feature_bins: Vec<u8>,
}

/// What a customer did in `(t, t + horizon]`, from their daily buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Realized {
    /// Purchases.
    pub purchases: u32,
    /// Spend, minor units.
    pub spend_minor: i64,
    /// Any event at all.
    pub active: bool,
}

impl CustomerState {
    /// What the customer did in `(cut, cut + horizon]`: the cut is the last
    /// millisecond of a day and the horizon whole days, so these are the
    /// daily buckets of the days after the cut's, up to and including the
    /// horizon's last.
    pub fn realized(&self, cut_ms: i64, horizon_ms: i64) -> Realized {
        let (first, last) = (
            day_of(cut_ms) + 1,
            day_of(cut_ms.saturating_add(horizon_ms)),
        );
        let mut r = Realized::default();
        for d in self
            .days()
            .iter()
            .filter(|d| (first..=last).contains(&i64::from(d.day)))
        {
            r.purchases = r.purchases.saturating_add(u32::from(d.purchases));
            r.spend_minor = r.spend_minor.saturating_add(i64::from(d.spend_minor));
            r.active |= d.browse > 0 || d.purchases > 0 || d.reviews > 0;
        }
        r
    }

    /// Takes a snapshot at `cut_ms` (unscored): the caller scores a copy of
    /// the state as it is now.
    pub(crate) fn open_snapshot(&mut self, cut_ms: i64) {
        self.snapshot_through_ms = self.snapshot_through_ms.max(cut_ms);
        let at = self.snapshots.partition_point(|s| s.cut_ms < cut_ms);
        self.snapshots.insert(
            at,
            Snapshot {
                cut_ms,
                purchased_before: self.lifetime.purchases > 0,
                ..Snapshot::default()
            },
        );
    }

    /// Removes and returns the snapshots whose horizon ended before
    /// `watermark_ms`, each with what the customer did in it.
    pub(crate) fn resolve_snapshots(
        &mut self,
        watermark_ms: i64,
        horizon_ms: i64,
    ) -> Vec<(Snapshot, Realized)> {
        let due = self
            .snapshots
            .partition_point(|s| s.cut_ms.saturating_add(horizon_ms) < watermark_ms);
        let taken: Vec<Snapshot> = self.snapshots.drain(..due).collect();
        taken
            .into_iter()
            .map(|s| {
                let r = self.realized(s.cut_ms, horizon_ms);
                (s, r)
            })
            .collect()
    }
}

/// A customer's state as of a cut, to score (see [`super::PartitionStore::take_captures`]).
#[derive(Debug, Clone)]
pub struct Capture {
    /// The customer.
    pub customer_id: String,
    /// The cut.
    pub cut_ms: i64,
    /// The state as of the cut.
    pub state: Box<CustomerState>,
}

/// A snapshot whose horizon has passed, with what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The customer.
    pub customer_id: String,
    /// The prediction.
    pub snapshot: Snapshot,
    /// What happened.
    pub realized: Realized,
}

/// The prediction a scored capture fills in.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicted {
    /// Model version.
    pub model_version: String,
    /// Most probable segment.
    pub segment: String,
    /// Purchase probability.
    pub purchase_probability: f32,
    /// Churn probability.
    pub churn_probability: f32,
    /// Predicted spend (minor units).
    pub predicted_spend: f32,
    /// Who predicted: "" for the served model, `baseline` or `shadow`.
    pub role: String,
    /// See [`Snapshot::feature_bins`].
    pub feature_bins: Vec<u8>,
}

impl Snapshot {
    /// Fills in a prediction.
    pub(crate) fn fill(&mut self, p: &Predicted) {
        self.model_version.clone_from(&p.model_version);
        self.segment.clone_from(&p.segment);
        self.purchase_probability = p.purchase_probability;
        self.churn_probability = p.churn_probability;
        self.predicted_spend = p.predicted_spend;
        self.role.clone_from(&p.role);
        self.feature_bins.clone_from(&p.feature_bins);
        self.scored = true;
    }
}

/// Where a partition's monitor stands: the first cut not closed yet and
/// the first resolution point (cut + horizon) not passed yet (derived from
/// the watermark when the store first moves it: what is before the
/// watermark a store starts from was closed by whoever committed the state
/// it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The first open cut.
    pub next_cut: i64,
    /// The first unresolved horizon end.
    pub next_resolution: i64,
}

/// Cuts closed in one step at most (a clock that jumps far ahead closes
/// the latest ones only; earlier populations are not captured).
pub(crate) const MAX_CUTS_PER_STEP: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::DAY_MS;

    fn rules() -> MonitorRules {
        MonitorRules {
            every_ms: 7 * DAY_MS,
            horizon_ms: 14 * DAY_MS,
            lookback_ms: 30 * DAY_MS,
        }
    }

    #[test]
    fn cuts_are_the_last_millisecond_of_every_seventh_day() {
        let m = rules();
        let t = m.cut_at_or_before(100 * DAY_MS);
        assert_eq!(t, 98 * DAY_MS - 1);
        assert_eq!(m.cut_at_or_before(t), t);
        assert_eq!(m.cut_at_or_before(t - 1), t - 7 * DAY_MS);
        assert_eq!(m.cut_after(t - 1), t);
        assert_eq!(m.cut_after(t), t + 7 * DAY_MS);
        assert_eq!(day_of(t + 1) - day_of(t), 1, "a day's last millisecond");
    }

    #[test]
    fn whole_days_are_required() {
        let mut m = rules();
        assert_eq!(m.problem(), None);
        m.every_ms = DAY_MS / 2;
        assert!(m.problem().is_some());
        m = rules();
        m.horizon_ms = 90 * DAY_MS;
        assert!(m.problem().is_some());
    }
}
