//! The customer features as people read them: their names (as
//! explanations name them) and each one's value in its own unit, decoded
//! from the featurizer's encoding.

use super::{Normalization, CLASSICAL_DIM, CUSTOMER_DIM, LIFETIME_DIM, PER_WINDOW, WINDOW_DAYS};

/// Names of the customer features (F), in `customer_features` order, as
/// explanations name them: per window `<measure>_<days>d`, then recency,
/// tenure, the lifetime purchase features and the classical inputs.
pub fn customer_feature_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        const WINDOW: [&str; PER_WINDOW] = [
            "browse",
            "cart_adds",
            "purchases",
            "reviews",
            "spend",
            "distinct_categories",
            "mean_rating",
        ];
        const REST: [&str; 3 + LIFETIME_DIM + CLASSICAL_DIM] = [
            "days_since_purchase",
            "days_since_event",
            "tenure_days",
            "lifetime_purchases",
            "lifetime_spend",
            "mean_order_value",
            "days_since_first_purchase",
            "purchase_span_days",
            "purchases_per_30d",
            "mean_purchase_gap_days",
            "purchase_gap_irregularity",
            "bgnbd_p_alive",
            "bgnbd_p_purchase",
            "bgnbd_expected_purchases",
            "expected_spend",
        ];
        let mut names = Vec::with_capacity(CUSTOMER_DIM);
        for days in WINDOW_DAYS {
            names.extend(WINDOW.iter().map(|m| format!("{m}_{days}d")));
        }
        names.extend(REST.iter().map(|s| s.to_string()));
        names
    })
}

/// The customer's own value of customer feature `j` from its encoded
/// value `v` (the inverse of the featurizer's scaling), with its unit's
/// name; `None` where it is not defined (never purchased, no rating, too
/// few purchases for a gap, no classical parameters).
pub fn customer_feature_value(
    j: usize,
    v: f32,
    norm: &Normalization,
) -> Option<(f64, &'static str)> {
    let log = |scale: f32| (f64::from(v) * f64::from(scale)).exp_m1().max(0.0);
    let windows = WINDOW_DAYS.len() * PER_WINDOW;
    if j < windows {
        return match j % PER_WINDOW {
            0..=3 => Some((log(norm.count_log_scale).round(), "count")),
            4 => Some((log(norm.spend_log_scale).round(), "minor_units")),
            5 => Some(((f64::from(v) * 64.0).round(), "categories")),
            _ => (v > 0.0).then(|| (f64::from(v) * 5.0, "stars")),
        };
    }
    let defined = v >= 0.0;
    match j - windows {
        // Recency, tenure.
        0..=2 => defined.then(|| (log(norm.days_log_scale), "days")),
        // Lifetime: purchases, spend, mean order value, T, t_x, rate, gap,
        // gap irregularity.
        3 => Some((log(norm.count_log_scale).round(), "count")),
        4 => Some((log(norm.spend_log_scale).round(), "minor_units")),
        5 => defined.then(|| (log(norm.amount_log_scale).round(), "minor_units")),
        6 | 7 | 9 => defined.then(|| (log(norm.days_log_scale), "days")),
        8 => defined.then(|| (log(norm.count_log_scale), "per_30_days")),
        10 => defined.then(|| (f64::from(v) * 3.0, "ratio")),
        // Classical: probability alive, of a purchase; expected purchases,
        // spend.
        11 | 12 => defined.then(|| (f64::from(v), "probability")),
        13 => defined.then(|| (log(norm.count_log_scale), "count")),
        14 => defined.then(|| (log(norm.spend_log_scale).round(), "minor_units")),
        _ => None,
    }
}
