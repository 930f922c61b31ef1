//! Micro-batching of dirty customers (Triton-style dynamic batching): a
//! customer is queued once however often it changes, and a batch is released
//! when it is full or when its oldest entry has waited `max_delay`.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Coalesces keys into batches bounded by size and delay.
#[derive(Debug)]
pub struct MicroBatcher<K> {
    max_batch: usize,
    max_delay: Duration,
    pending: Vec<K>,
    queued: HashSet<K>,
    oldest: Option<Instant>,
}

impl<K: Clone + Eq + Hash> MicroBatcher<K> {
    /// A batcher releasing at most `max_batch` keys, after at most `max_delay`.
    pub fn new(max_batch: usize, max_delay: Duration) -> Self {
        MicroBatcher {
            max_batch: max_batch.max(1),
            max_delay,
            pending: Vec::new(),
            queued: HashSet::new(),
            oldest: None,
        }
    }

    /// Queues `key` (no-op when it is already queued); returns whether it was new.
    pub fn push(&mut self, key: K, now: Instant) -> bool {
        if !self.queued.insert(key.clone()) {
            return false;
        }
        if self.pending.is_empty() {
            self.oldest = Some(now);
        }
        self.pending.push(key);
        true
    }

    /// Keys waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the oldest waiting key's delay runs out.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.max_delay)
    }

    /// The next batch, if one is due: full, or its oldest key waited long enough.
    pub fn take(&mut self, now: Instant) -> Option<Vec<K>> {
        let due = self.pending.len() >= self.max_batch || self.deadline().is_some_and(|d| now >= d);
        if !due || self.pending.is_empty() {
            return None;
        }
        Some(self.release(now))
    }

    /// Everything waiting, in batches (shutdown, commit).
    pub fn drain(&mut self, now: Instant) -> Vec<Vec<K>> {
        let mut out = Vec::new();
        while !self.pending.is_empty() {
            out.push(self.release(now));
        }
        out
    }

    fn release(&mut self, now: Instant) -> Vec<K> {
        let n = self.pending.len().min(self.max_batch);
        let batch: Vec<K> = self.pending.drain(..n).collect();
        for k in &batch {
            self.queued.remove(k);
        }
        // What stays behind starts a new wait from now (it was queued later
        // than the released keys, so this never shortens a wait by much).
        self.oldest = (!self.pending.is_empty()).then_some(now);
        batch
    }
}

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

    #[tokio::test(start_paused = true)]
    async fn batches_fill_or_time_out_and_coalesce() {
        let mut b = MicroBatcher::new(3, Duration::from_millis(20));
        let t0 = Instant::now();
        assert!(b.push("a", t0));
        assert!(!b.push("a", t0), "a dirty customer is queued once");
        assert!(b.push("b", t0));
        assert_eq!(b.take(t0), None, "neither full nor late");
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(20)));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(b.take(Instant::now()), Some(vec!["a", "b"]));
        assert!(b.is_empty());
        let t1 = Instant::now();
        for k in ["c", "d", "e", "f"] {
            b.push(k, t1);
        }
        assert_eq!(b.take(t1), Some(vec!["c", "d", "e"]), "full batch at once");
        assert_eq!(b.take(t1), None);
        assert!(b.push("c", t1), "released keys can be queued again");
        assert_eq!(b.drain(t1), vec![vec!["f", "c"]]);
    }
}
