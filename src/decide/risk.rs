//! Risk flags beside segments: fraud and manipulation patterns computed from
//! the customer's state (the bounded recent-event sequence), raised and
//! cleared with hysteresis.
//!
//! Each rule turns the recent events as of a time into a score: its measure
//! divided by its threshold (`[risk]` in the config). A flag is raised when
//! the score reaches 1 and cleared when it falls below `risk.clear_ratio`
//! (0.5), so a customer hovering at the threshold does not flap. The raised
//! flags are one bit each in the customer's decision memory, so they are in
//! the changelog and restored with the state, and a raise or clear is
//! published once, in the cycle's transaction.
//!
//! The rules see only the recent events the state keeps (`state.max_events`
//! per customer): patterns longer than that window are not seen.

use crate::state::{kind, ProductSketch, RecentEvent};

/// Version of the rule set, in every `RiskFlag`.
pub const RULES_VERSION: &str = "risk-rules-1";

pub use crate::config::{RiskConfig, Rule};

/// What one rule found as of a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The rule.
    pub rule: Rule,
    /// Measure / threshold: 1 or more raises, below `clear_ratio` clears.
    pub score: f64,
    /// The figures behind the score.
    pub evidence: Vec<(&'static str, f64)>,
}

/// Severity of a raised flag from its score.
pub fn severity(score: f64) -> &'static str {
    if score >= 2.0 {
        "HIGH"
    } else if score >= 1.0 {
        "MEDIUM"
    } else {
        "LOW"
    }
}

fn is_browse(e: &RecentEvent) -> bool {
    matches!(
        e.kind,
        kind::VIEW | kind::CART_ADD | kind::CART_REMOVE | kind::WISHLIST | kind::SEARCH
    )
}

/// Every enabled rule's finding on `recent` (oldest first) as of
/// `as_of_ms`; `bought` holds every product the customer ever purchased.
pub fn evaluate(
    cfg: &RiskConfig,
    recent: &[RecentEvent],
    bought: &ProductSketch,
    as_of_ms: i64,
) -> Vec<Finding> {
    let now = u32::try_from(as_of_ms.div_euclid(1000).max(0)).unwrap_or(u32::MAX);
    let within = |e: &RecentEvent, s: u32| e.time_s <= now && now - e.time_s < s;
    let mut out = Vec::with_capacity(cfg.rules.len());
    for rule in Rule::ALL {
        if !cfg.rules.contains(&rule) {
            continue;
        }
        let finding = match rule {
            Rule::BotBrowsing => {
                let per_minute = recent
                    .iter()
                    .filter(|e| is_browse(e) && within(e, 60))
                    .count();
                let five = recent
                    .iter()
                    .filter(|e| is_browse(e) && within(e, 300))
                    .count();
                let sustained = five as f64 / (5.0 * f64::from(cfg.bot_sustained_per_minute));
                let times: Vec<u32> = recent
                    .iter()
                    .filter(|e| is_browse(e) && within(e, 600))
                    .map(|e| e.time_s)
                    .collect();
                let gaps: Vec<f64> = times.windows(2).map(|w| f64::from(w[1] - w[0])).collect();
                let (mean, cv) = if gaps.is_empty() {
                    (0.0, f64::INFINITY)
                } else {
                    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
                    let var =
                        gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
                    (
                        mean,
                        if mean > 0.0 {
                            var.sqrt() / mean
                        } else {
                            f64::INFINITY
                        },
                    )
                };
                let regular =
                    if gaps.len() as u32 >= cfg.bot_min_gaps && mean <= cfg.bot_max_mean_gap_s {
                        cfg.bot_max_gap_cv / cv.max(1e-3)
                    } else {
                        0.0
                    };
                let rate = per_minute as f64 / f64::from(cfg.bot_events_per_minute);
                Finding {
                    rule,
                    score: rate.max(regular).max(sustained),
                    evidence: vec![
                        ("browse_events_last_minute", per_minute as f64),
                        ("browse_events_last_5_minutes", five as f64),
                        ("browse_gaps_last_10_minutes", gaps.len() as f64),
                        ("mean_gap_seconds", mean),
                        ("gap_cv", if cv.is_finite() { cv } else { -1.0 }),
                    ],
                }
            }
            Rule::ReviewBurst => {
                let reviews: Vec<&RecentEvent> = recent
                    .iter()
                    .filter(|e| e.kind == kind::REVIEW && within(e, cfg.window_s))
                    .collect();
                let extreme = reviews.iter().all(|e| e.rating == 1 || e.rating == 5);
                let mut categories: Vec<u32> = reviews.iter().map(|e| e.category).collect();
                categories.sort_unstable();
                categories.dedup();
                let extreme_score = if extreme && categories.len() >= 3 {
                    reviews.len() as f64 / f64::from(cfg.extreme_reviews)
                } else {
                    0.0
                };
                Finding {
                    rule,
                    score: (reviews.len() as f64 / f64::from(cfg.review_burst)).max(extreme_score),
                    evidence: vec![
                        ("reviews_in_window", reviews.len() as f64),
                        ("window_seconds", f64::from(cfg.window_s)),
                        ("categories", categories.len() as f64),
                        (
                            "all_extreme_ratings",
                            f64::from(u8::from(extreme && !reviews.is_empty())),
                        ),
                    ],
                }
            }
            Rule::UnverifiedReviews => {
                let recent_buys: Vec<u32> = recent
                    .iter()
                    .filter(|e| e.kind == kind::PURCHASE && e.product != 0)
                    .map(|e| e.product)
                    .collect();
                let reviews: Vec<&RecentEvent> = recent
                    .iter()
                    .filter(|e| e.kind == kind::REVIEW && e.product != 0)
                    .collect();
                // Bought in the recent events, or ever (a purchase that left
                // the window, a line other than the order's top one).
                let unverified = reviews
                    .iter()
                    .filter(|e| !recent_buys.contains(&e.product) && !bought.contains(e.product))
                    .count();
                let share = if reviews.is_empty() {
                    0.0
                } else {
                    unverified as f64 / reviews.len() as f64
                };
                let score = if reviews.len() as u32 >= cfg.unverified_min_reviews {
                    share / cfg.unverified_share
                } else {
                    0.0
                };
                Finding {
                    rule,
                    score,
                    evidence: vec![
                        ("recent_reviews", reviews.len() as f64),
                        ("unverified_reviews", unverified as f64),
                        ("unverified_share", share),
                    ],
                }
            }
            Rule::OrderVelocity => {
                let small = recent
                    .iter()
                    .filter(|e| {
                        e.kind == kind::PURCHASE
                            && e.amount_minor <= cfg.small_order_minor
                            && within(e, cfg.window_s)
                    })
                    .count();
                Finding {
                    rule,
                    score: small as f64 / f64::from(cfg.order_velocity),
                    evidence: vec![
                        ("small_orders_in_window", small as f64),
                        ("window_seconds", f64::from(cfg.window_s)),
                        ("small_order_minor", f64::from(cfg.small_order_minor)),
                    ],
                }
            }
            Rule::Brushing => {
                let small: Vec<&RecentEvent> = recent
                    .iter()
                    .filter(|e| {
                        e.kind == kind::PURCHASE
                            && e.product != 0
                            && e.amount_minor <= cfg.small_order_minor
                    })
                    .collect();
                let repeats = small
                    .iter()
                    .map(|a| small.iter().filter(|b| b.product == a.product).count())
                    .max()
                    .unwrap_or(0);
                let pairs = small
                    .iter()
                    .filter(|p| {
                        recent.iter().any(|r| {
                            r.kind == kind::REVIEW
                                && r.rating == 5
                                && r.product == p.product
                                && r.time_s >= p.time_s
                                && r.time_s - p.time_s <= cfg.brushing_review_within_s
                        })
                    })
                    .count();
                Finding {
                    rule,
                    score: (repeats as f64 / f64::from(cfg.brushing_repeats))
                        .max(pairs as f64 / f64::from(cfg.brushing_pairs)),
                    evidence: vec![
                        ("small_orders_of_one_product", repeats as f64),
                        ("purchase_then_5_star_review", pairs as f64),
                    ],
                }
            }
        };
        out.push(finding);
    }
    out
}

/// Why a flag changed (`RiskFlag.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The rule's score crossed its threshold.
    Rule,
    /// The customer was erased with the flag raised.
    Erased,
    /// The customer was evicted (`state.ttl`) with the flag raised.
    Evicted,
}

impl Cause {
    /// The value in `RiskFlag.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Rule => "RULE",
            Cause::Erased => "ERASED",
            Cause::Evicted => "EVICTED",
        }
    }
}

/// The clears of every flag raised in `flags`, for a customer who leaves
/// (erased or evicted): no rule ran, so the findings carry no evidence.
pub fn clear_all(flags: u8) -> Vec<Transition> {
    Rule::ALL
        .into_iter()
        .filter(|r| flags & r.bit() != 0)
        .map(|rule| Transition {
            finding: Finding {
                rule,
                score: 0.0,
                evidence: Vec::new(),
            },
            raised: false,
        })
        .collect()
}

/// A flag that changes: raised (`true`) or cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// What the rule found.
    pub finding: Finding,
    /// Raised or cleared.
    pub raised: bool,
}

/// Applies findings to the raised `flags` with hysteresis; returns the new
/// flags and the changes. A flag of a rule that is no longer enabled clears.
pub fn apply(cfg: &RiskConfig, flags: u8, findings: Vec<Finding>) -> (u8, Vec<Transition>) {
    apply_only(cfg, flags, findings, true, true)
}

/// [`apply`], raising only, or clearing only. The pipeline raises as of
/// each event as it is applied (so a burst is seen as of its own time, also
/// when a catch-up reads days of events in one cycle) and clears as of the
/// partition's event time when the customer is scored (so a pattern that
/// stopped clears as time passes).
pub fn apply_only(
    cfg: &RiskConfig,
    flags: u8,
    findings: Vec<Finding>,
    raise: bool,
    clear: bool,
) -> (u8, Vec<Transition>) {
    let mut next = flags;
    let mut changes = Vec::new();
    for f in findings {
        let set = flags & f.rule.bit() != 0;
        if raise && !set && f.score >= 1.0 {
            next |= f.rule.bit();
            changes.push(Transition {
                finding: f,
                raised: true,
            });
        } else if clear && set && f.score < cfg.clear_ratio {
            next &= !f.rule.bit();
            changes.push(Transition {
                finding: f,
                raised: false,
            });
        }
    }
    for rule in Rule::of_flags(flags) {
        if clear && !cfg.rules.contains(&rule) {
            next &= !rule.bit();
            changes.push(Transition {
                finding: Finding {
                    rule,
                    score: 0.0,
                    evidence: vec![("rule_disabled", 1.0)],
                },
                raised: false,
            });
        }
    }
    (next, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: u8, t: u32, product: u32, amount: u32, rating: u8, category: u32) -> RecentEvent {
        RecentEvent {
            id_hash: u64::from(t) * 31 + u64::from(product),
            time_s: t,
            amount_minor: amount,
            category,
            product,
            dwell_s: 1,
            kind,
            rating,
        }
    }

    fn score(rule: Rule, recent: &[RecentEvent], now_s: u32) -> f64 {
        evaluate(
            &RiskConfig::default(),
            recent,
            &ProductSketch::default(),
            i64::from(now_s) * 1000,
        )
        .into_iter()
        .find(|f| f.rule == rule)
        .unwrap()
        .score
    }

    #[test]
    fn a_bot_browses_fast_and_regularly_a_person_does_not() {
        let bot: Vec<_> = (0..40)
            .map(|i| ev(kind::VIEW, 1000 + i * 2, 7, 100, 0, 1))
            .collect();
        assert!(score(Rule::BotBrowsing, &bot, 1080) >= 1.0);
        let gaps = [5, 40, 12, 90, 7, 33, 61, 4, 18, 120, 9, 25, 44];
        let mut t = 1000;
        let person: Vec<_> = gaps
            .iter()
            .map(|g| {
                t += g;
                ev(kind::VIEW, t, 7, 100, 0, 1)
            })
            .collect();
        assert!(score(Rule::BotBrowsing, &person, t) < 0.5);
    }

    #[test]
    fn review_bursts_and_unverified_reviews() {
        let burst: Vec<_> = (0..7)
            .map(|i| {
                ev(
                    kind::REVIEW,
                    5000 + i * 60,
                    100 + i,
                    0,
                    if i % 2 == 0 { 5 } else { 1 },
                    i,
                )
            })
            .collect();
        assert!(score(Rule::ReviewBurst, &burst, 5500) >= 1.0);
        assert!(score(Rule::UnverifiedReviews, &burst, 5500) >= 1.0);
        // Hours later the burst is out of the window: it clears.
        assert!(score(Rule::ReviewBurst, &burst, 5500 + 7200) < 0.5);
        // Reviews of bought products are verified.
        let mut honest = Vec::new();
        for i in 0..5 {
            honest.push(ev(kind::PURCHASE, 1000 + i * 86_400, 200 + i, 5000, 0, 1));
            honest.push(ev(kind::REVIEW, 2000 + i * 86_400, 200 + i, 0, 4, 1));
        }
        assert!(score(Rule::UnverifiedReviews, &honest, 500_000) < 0.5);
        assert!(score(Rule::ReviewBurst, &honest, 500_000) < 0.5);
    }

    /// Issue 36 (the demo flagged ordinary reviewers): a review of a
    /// product bought long ago (its purchase left the recent window) or
    /// bought as a line other than the order's top one is verified by the
    /// lifetime purchase sketch.
    #[test]
    fn reviews_of_products_bought_before_the_window_are_verified() {
        let reviews: Vec<_> = (0..5)
            .map(|i| ev(kind::REVIEW, 2000 + i * 86_400, 300 + i, 0, 4, 1))
            .collect();
        let unverified = |bought: &ProductSketch| {
            evaluate(&RiskConfig::default(), &reviews, bought, 500_000_000)
                .into_iter()
                .find(|f| f.rule == Rule::UnverifiedReviews)
                .unwrap()
                .score
        };
        assert!(
            unverified(&ProductSketch::default()) >= 1.0,
            "nothing bought"
        );
        let mut bought = ProductSketch::default();
        for i in 0..5 {
            bought.insert(300 + i);
        }
        assert!(unverified(&bought) < 0.5, "all bought, earlier");
        // A sketch of other products leaves the reviews unverified.
        let mut other = ProductSketch::default();
        for p in 10_000..10_020 {
            other.insert(p);
        }
        assert!(unverified(&other) >= 1.0);
    }

    #[test]
    fn brushing_and_order_velocity() {
        let mut ring = Vec::new();
        for i in 0..3 {
            ring.push(ev(kind::PURCHASE, 10_000 + i * 20_000, 9, 199, 0, 2));
            ring.push(ev(kind::REVIEW, 10_000 + i * 20_000 + 120, 9, 0, 5, 2));
        }
        assert!(score(Rule::Brushing, &ring, 60_000) >= 1.0);
        let rush: Vec<_> = (0..6)
            .map(|i| ev(kind::PURCHASE, 1000 + i * 300, 50 + i, 499, 0, 3))
            .collect();
        assert!(score(Rule::OrderVelocity, &rush, 3000) >= 1.0);
        let shopper: Vec<_> = (0..4)
            .map(|i| ev(kind::PURCHASE, 1000 + i * 86_400 * 7, 60 + i, 8000, 0, 3))
            .collect();
        assert!(score(Rule::Brushing, &shopper, 3_000_000) < 0.5);
        assert!(score(Rule::OrderVelocity, &shopper, 3_000_000) < 0.5);
    }

    #[test]
    fn flags_raise_once_and_clear_with_hysteresis() {
        let cfg = RiskConfig::default();
        let f = |score| {
            vec![Finding {
                rule: Rule::Brushing,
                score,
                evidence: vec![],
            }]
        };
        let (flags, t) = apply(&cfg, 0, f(1.2));
        assert_eq!(
            (flags, t.len(), t[0].raised),
            (Rule::Brushing.bit(), 1, true)
        );
        // Still raised, or between the thresholds: no change.
        assert!(apply(&cfg, flags, f(1.5)).1.is_empty());
        assert!(apply(&cfg, flags, f(0.7)).1.is_empty());
        let (flags, t) = apply(&cfg, flags, f(0.3));
        assert_eq!((flags, t[0].raised), (0, false));
        // A disabled rule's flag clears.
        let only_bots = RiskConfig {
            rules: vec![Rule::BotBrowsing],
            ..RiskConfig::default()
        };
        let (flags, t) = apply(&only_bots, Rule::Brushing.bit(), vec![]);
        assert_eq!((flags, t.len()), (0, 1));
    }
}
