//! Live outcomes' schedule, from `[train]` and `output.outcomes_every` (see
//! `state::monitor`).

use crate::units::DAY_MS;

/// Where and how often snapshots are taken (from `[train]`: `sample_every`
/// unless `output.outcomes_every` is set, `lookback`, `horizon`), when
/// `output.outcomes_topic` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorRules {
    /// Distance between cuts (whole days, ms).
    pub every_ms: i64,
    /// Outcomes count in `(t, t + horizon]` (whole days, ms).
    pub horizon_ms: i64,
    /// A customer is in the population at `t` if active in `(t - lookback, t]`.
    pub lookback_ms: i64,
}

impl MonitorRules {
    /// The monitor of a configuration; `None` without `output.outcomes_topic`
    /// (or with intervals that are not whole days, which `Config::check`
    /// refuses).
    pub fn of(cfg: &super::Config) -> Option<MonitorRules> {
        let rules = Self::configured(cfg);
        (!cfg.output.outcomes_topic.is_empty() && rules.problem().is_none()).then_some(rules)
    }

    /// The schedule a configuration asks for, whether or not it can be
    /// monitored ([`MonitorRules::problem`]).
    pub(super) fn configured(cfg: &super::Config) -> MonitorRules {
        let ms = crate::units::millis;
        let every = if cfg.output.outcomes_every.is_zero() {
            cfg.train.sample_every
        } else {
            cfg.output.outcomes_every
        };
        MonitorRules {
            every_ms: ms(every),
            horizon_ms: ms(cfg.train.horizon),
            lookback_ms: ms(cfg.train.lookback),
        }
    }

    /// Why these rules cannot be monitored (the buckets that resolve an
    /// outcome are whole days, kept for 90 days).
    pub fn problem(&self) -> Option<&'static str> {
        if self.every_ms < DAY_MS || self.every_ms % DAY_MS != 0 {
            Some("live outcomes need cuts in whole days (output.outcomes_every, or train.sample_every when it is 0)")
        } else if self.horizon_ms < DAY_MS || self.horizon_ms % DAY_MS != 0 {
            Some("live outcomes need train.horizon in whole days")
        } else if self.horizon_ms > 60 * DAY_MS {
            Some("live outcomes need train.horizon of at most 60 days (the state keeps 90 days of daily buckets)")
        } else {
            None
        }
    }

    /// The latest cut at or before `ms` (`i64::MIN` when none).
    pub fn cut_at_or_before(&self, ms: i64) -> i64 {
        (ms.saturating_add(1))
            .div_euclid(self.every_ms)
            .saturating_mul(self.every_ms)
            .saturating_sub(1)
    }

    /// The first cut strictly after `ms`.
    pub fn cut_after(&self, ms: i64) -> i64 {
        self.cut_at_or_before(ms).saturating_add(self.every_ms)
    }
}
