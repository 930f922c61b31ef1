//! `[risk]`: the risk rules that run and their thresholds (the rules
//! themselves are `segstream::decide::risk`).

use serde::{Deserialize, Serialize};

/// A risk rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Browsing faster or more regularly than people do.
    BotBrowsing,
    /// Many reviews in a short time, or extreme ratings across unrelated
    /// products.
    ReviewBurst,
    /// Most reviews are of products the customer did not buy.
    UnverifiedReviews,
    /// Many small orders in a short time.
    OrderVelocity,
    /// Fake orders: a cheap product ordered again and again, or purchases
    /// followed within minutes by a 5-star review of the same product.
    Brushing,
}

impl Rule {
    /// Every rule, in bit order.
    pub const ALL: [Rule; 5] = [
        Rule::BotBrowsing,
        Rule::ReviewBurst,
        Rule::UnverifiedReviews,
        Rule::OrderVelocity,
        Rule::Brushing,
    ];

    /// Its name (the `rule` field and reason code).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::BotBrowsing => "bot_browsing",
            Rule::ReviewBurst => "review_burst",
            Rule::UnverifiedReviews => "unverified_reviews",
            Rule::OrderVelocity => "order_velocity",
            Rule::Brushing => "brushing",
        }
    }

    /// Its bit in `Decision::risk_flags`.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The rules whose bits are set in `flags`.
    pub fn of_flags(flags: u8) -> impl Iterator<Item = Rule> {
        Rule::ALL.into_iter().filter(move |r| flags & r.bit() != 0)
    }
}

/// Thresholds of the rules (`[risk]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    /// The rules that run (names as in `RiskFlag.rule`).
    pub rules: Vec<Rule>,
    /// A raised flag clears when its score falls below this (0..1).
    pub clear_ratio: f64,
    /// bot_browsing: browse events within one minute.
    pub bot_events_per_minute: u32,
    /// bot_browsing: browse events per minute sustained over five minutes.
    pub bot_sustained_per_minute: u32,
    /// bot_browsing: at least this many consecutive browse gaps within ten
    /// minutes ...
    pub bot_min_gaps: u32,
    /// ... with a coefficient of variation at most this (people are
    /// irregular) ...
    pub bot_max_gap_cv: f64,
    /// ... and a mean gap at most this many seconds.
    pub bot_max_mean_gap_s: f64,
    /// review_burst and order_velocity: the window, seconds.
    pub window_s: u32,
    /// review_burst: reviews within the window.
    pub review_burst: u32,
    /// review_burst: this many reviews within the window, all rated 1 or 5,
    /// across at least three categories, count as a burst too.
    pub extreme_reviews: u32,
    /// unverified_reviews: at least this many recent reviews ...
    pub unverified_min_reviews: u32,
    /// ... of which at least this share is of products not bought.
    pub unverified_share: f64,
    /// order_velocity and brushing: an order this small (minor units) is
    /// "small".
    pub small_order_minor: u32,
    /// order_velocity: small orders within the window.
    pub order_velocity: u32,
    /// brushing: small orders of the same product among the recent events.
    pub brushing_repeats: u32,
    /// brushing: purchase then 5-star review of the same product within
    /// `brushing_review_within_s`, this many times.
    pub brushing_pairs: u32,
    /// brushing: how soon after the purchase the review comes, seconds.
    pub brushing_review_within_s: u32,
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig {
            rules: Rule::ALL.to_vec(),
            clear_ratio: 0.5,
            bot_events_per_minute: 30,
            bot_sustained_per_minute: 12,
            bot_min_gaps: 12,
            bot_max_gap_cv: 0.15,
            bot_max_mean_gap_s: 10.0,
            window_s: 3600,
            review_burst: 6,
            extreme_reviews: 5,
            unverified_min_reviews: 4,
            unverified_share: 0.8,
            small_order_minor: 1500,
            order_velocity: 5,
            brushing_repeats: 3,
            brushing_pairs: 2,
            brushing_review_within_s: 900,
        }
    }
}

impl RiskConfig {
    /// Problems with the thresholds, as (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(self.clear_ratio > 0.0 && self.clear_ratio < 1.0) {
            p.push((
                "risk.clear_ratio",
                "must be between 0 and 1 (exclusive)".into(),
            ));
        }
        if !(self.bot_max_gap_cv > 0.0 && self.bot_max_gap_cv.is_finite()) {
            p.push(("risk.bot_max_gap_cv", "must be > 0".into()));
        }
        if !(self.unverified_share > 0.0 && self.unverified_share <= 1.0) {
            p.push(("risk.unverified_share", "must be in (0, 1]".into()));
        }
        for (k, v) in [
            ("risk.bot_events_per_minute", self.bot_events_per_minute),
            (
                "risk.bot_sustained_per_minute",
                self.bot_sustained_per_minute,
            ),
            ("risk.bot_min_gaps", self.bot_min_gaps),
            ("risk.window_s", self.window_s),
            ("risk.review_burst", self.review_burst),
            ("risk.extreme_reviews", self.extreme_reviews),
            ("risk.unverified_min_reviews", self.unverified_min_reviews),
            ("risk.order_velocity", self.order_velocity),
            ("risk.brushing_repeats", self.brushing_repeats),
            ("risk.brushing_pairs", self.brushing_pairs),
        ] {
            if v == 0 {
                p.push((k, "must be at least 1".into()));
            }
        }
        p
    }
}
