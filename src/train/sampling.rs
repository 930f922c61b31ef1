//! Which examples training sees: the split point
//! between training and validation, and the sampling of examples (with the
//! weights that keep the training objective unbiased). Pure; used by
//! [`super::examples::build`].

use crate::config::TrainConfig;
use crate::units::millis as ms;

/// Cut-time schedule and example selection (from `[train]`).
///
/// Training cost follows examples (customers × cut times), not events, so
/// examples are sampled when there are more than `max_examples`:
/// - training examples of customers silent for longer than `silent_after`
///   are kept at `silent_rate` times the rate of the others (their future
///   is the least uncertain), and every kept example weighs 1 / its
///   probability of being kept, so the weighted training objective is the
///   full one's unbiased estimate;
/// - validation examples are sampled uniformly (at most `max_validation`),
///   so unweighted metrics stay unbiased;
/// - cut times in the purge gap between training and validation (see
///   [`super::examples::split_by_time`]) are not built at all.
///
/// The choice is a hash of (seed, customer, cut time): reproducible, and
/// independent of the order events arrive in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Distance between cut times (ms).
    pub every_ms: i64,
    /// A customer is an example only if active within this long before t.
    pub lookback_ms: i64,
    /// Share of cut times, the latest, that validate.
    pub validation_fraction: f64,
    /// Training examples kept at most (in expectation); 0: all.
    pub max_examples: usize,
    /// Validation examples kept at most (in expectation); 0: all.
    pub max_validation: usize,
    /// Customers silent for longer than this before t are "silent".
    pub silent_after_ms: i64,
    /// Sampling rate of silent customers' training examples relative to
    /// the others' (in (0, 1]).
    pub silent_rate: f64,
    /// Seed of the choice.
    pub seed: u64,
}

impl Sampling {
    /// The sampling of a trainer config.
    pub fn from_config(cfg: &TrainConfig) -> Self {
        Sampling {
            every_ms: ms(cfg.sample_every),
            lookback_ms: ms(cfg.lookback),
            validation_fraction: cfg.validation_fraction,
            max_examples: cfg.max_examples,
            max_validation: cfg.max_validation_examples,
            silent_after_ms: ms(cfg.silent_after),
            silent_rate: cfg.silent_rate,
            seed: cfg.seed,
        }
    }

    /// Keeps everything (tests and small histories).
    pub fn all(every_ms: i64, lookback_ms: i64, validation_fraction: f64) -> Self {
        Sampling {
            every_ms,
            lookback_ms,
            validation_fraction,
            max_examples: 0,
            max_validation: 0,
            silent_after_ms: lookback_ms,
            silent_rate: 1.0,
            seed: 0,
        }
    }
}

/// The first validation cut time of `cuts` (sorted) when the latest
/// `fraction` of them validate; `None` with fewer than two cuts or a
/// fraction of 0 (no split: every cut time is built for training).
pub fn validation_start(cuts: &[i64], fraction: f64) -> Option<i64> {
    if cuts.len() < 2 || fraction <= 0.0 {
        return None;
    }
    let n_val = ((cuts.len() as f64 * fraction).ceil() as usize).clamp(1, cuts.len() - 1);
    Some(cuts[cuts.len() - n_val])
}

/// A uniform number in [0, 1) from (seed, customer, cut time).
pub(super) fn sample_draw(seed: u64, customer: u32, t: i64) -> f64 {
    let mut z = seed ^ (u64::from(customer) << 32) ^ (t as u64).rotate_left(17);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Keep probabilities: (training, recently active), (training, silent),
/// validation, from the number of candidate examples of each kind.
pub(super) fn keep_rates(
    s: &Sampling,
    train_recent: u64,
    train_silent: u64,
    val: u64,
) -> (f64, f64, f64) {
    let cap = |budget: usize, n: f64| {
        if budget == 0 || n <= budget as f64 {
            1.0
        } else {
            budget as f64 / n
        }
    };
    let rate = s.silent_rate.clamp(1e-3, 1.0);
    let all = (train_recent + train_silent) as f64;
    let (recent, silent) = if s.max_examples == 0 || all <= s.max_examples as f64 {
        (1.0, 1.0)
    } else {
        let base =
            (s.max_examples as f64 / (train_recent as f64 + rate * train_silent as f64)).min(1.0);
        (base, (base * rate).min(1.0))
    };
    (recent, silent, cap(s.max_validation, val as f64))
}
