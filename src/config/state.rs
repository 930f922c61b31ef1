//! `[state]`: per-customer state, event-time rules and the changelog.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::{check_topic_name, range, Problems};

/// Per-customer state, event-time rules and the changelog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Recent events kept per customer (the model's sequence length N).
    pub max_events: usize,
    /// Hashed review-text tokens kept per review (T).
    pub text_tokens: usize,
    /// How far behind its partition's latest event time an event may arrive
    /// and still be placed in order; later ones go to the dead-letter topic
    /// with reason `late`.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// After this long without input on a partition, its watermark follows
    /// the wall clock so that inactivity timers still fire.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Customers with no event for this long are evicted (tombstoned in the changelog).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// A customer without events is rescored (trigger INACTIVITY) this long
    /// after their latest event.
    #[serde(with = "humantime_serde")]
    pub review_after: Duration,
    /// Compacted topic holding every customer's state, co-partitioned with the input.
    pub changelog_topic: String,
    /// Longest time a partition's restore may take before it is an error.
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
}

/// The state defaults: the one place they are written (the stores'
/// `StoreLimits::default()` is built from them with `StateConfig::limits`).
impl Default for StateConfig {
    fn default() -> Self {
        let day = Duration::from_secs(86_400);
        StateConfig {
            max_events: 64,
            text_tokens: 16,
            allowed_lateness: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(30),
            ttl: day * 400,
            review_after: day * 7,
            changelog_topic: "segstream-state-changelog".to_string(),
            restore_timeout: Duration::from_secs(600),
        }
    }
}

impl StateConfig {
    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        let s = self;
        range(p, "state.max_events", s.max_events, 1, 1024);
        range(p, "state.text_tokens", s.text_tokens, 0, 255);
        if s.allowed_lateness > Duration::from_secs(7 * 86_400) {
            p.add("state.allowed_lateness", "must be at most 7 days");
        }
        if s.idle_timeout.is_zero() {
            p.add("state.idle_timeout", "must be greater than zero");
        }
        if s.review_after.is_zero() {
            p.add("state.review_after", "must be greater than zero");
        }
        if s.ttl < Duration::from_secs(90 * 86_400) {
            p.add(
                "state.ttl",
                "must be at least 90 days (the longest aggregate window)",
            );
        }
        if let Err(why) = check_topic_name(&s.changelog_topic) {
            p.add("state.changelog_topic", why.to_string());
        }
    }
}
