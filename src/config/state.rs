//! `[state]`: per-customer state, event-time rules and the changelog.

#[allow(clippy::wildcard_imports)]
use super::*;

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

impl Default for StateConfig {
    fn default() -> Self {
        let l = StoreLimits::default();
        let d = |ms: i64| Duration::from_millis(ms.unsigned_abs());
        StateConfig {
            max_events: l.state.max_events,
            text_tokens: l.state.text_tokens,
            allowed_lateness: d(l.allowed_lateness_ms),
            idle_timeout: l.idle_timeout,
            ttl: d(l.ttl_ms),
            review_after: d(l.review_after_ms),
            changelog_topic: "segstream-state-changelog".to_string(),
            restore_timeout: Duration::from_secs(600),
        }
    }
}

impl StateConfig {
    /// The rules the partition stores apply.
    pub fn limits(&self) -> StoreLimits {
        let ms = crate::units::millis;
        StoreLimits {
            state: StateLimits {
                max_events: self.max_events,
                text_tokens: self.text_tokens,
            },
            allowed_lateness_ms: ms(self.allowed_lateness),
            idle_timeout: self.idle_timeout,
            ttl_ms: ms(self.ttl),
            review_after_ms: ms(self.review_after),
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
            p.add("state.changelog_topic", why);
        }
    }
}
