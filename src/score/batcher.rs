//! Rate-limited rescoring after a model swap. (Dirty customers themselves
//! are coalesced per commit cycle by the run loop: a customer is scored once
//! per cycle however many events it had, in batches of `score.max_batch`.)

use tokio::time::Instant;

/// The rate-limited rescoring of known customers after a model swap
/// (trigger MODEL_UPDATE): releases keys at most `per_second` on average, so
/// a swap never floods the scorer or the output topic.
#[derive(Debug)]
pub struct RescoreSweep<K> {
    keys: Vec<K>,
    next: usize,
    per_second: f64,
    started: Instant,
}

impl<K: Clone> RescoreSweep<K> {
    /// A sweep over `keys` starting at `now`.
    pub fn new(keys: Vec<K>, per_second: f64, now: Instant) -> Self {
        RescoreSweep {
            keys,
            next: 0,
            per_second: per_second.max(0.001),
            started: now,
        }
    }

    /// Keys whose turn has come by `now`, at most `max` of them.
    pub fn take(&mut self, now: Instant, max: usize) -> Vec<K> {
        let allowed = (now.saturating_duration_since(self.started).as_secs_f64() * self.per_second)
            .floor() as usize;
        let end = allowed.min(self.keys.len()).min(self.next + max);
        let out = self.keys[self.next.min(end)..end].to_vec();
        self.next = self.next.max(end);
        out
    }

    /// Keys not yet released.
    pub fn remaining(&self) -> usize {
        self.keys.len() - self.next
    }

    /// Whether every key was released.
    pub fn is_done(&self) -> bool {
        self.remaining() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sweeps_release_keys_at_the_configured_rate() {
        let t0 = Instant::now();
        let mut s = RescoreSweep::new((0..100).collect(), 10.0, t0);
        assert!(s.take(t0, 50).is_empty());
        tokio::time::advance(Duration::from_millis(1_050)).await;
        assert_eq!(s.take(Instant::now(), 50), (0..10).collect::<Vec<_>>());
        assert!(
            s.take(Instant::now(), 50).is_empty(),
            "no burst beyond the rate"
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(s.take(Instant::now(), 30).len(), 30, "bounded per call");
        assert_eq!(s.take(Instant::now(), 1000).len(), 60);
        assert!(s.is_done());
    }
}
