//! One retry policy for the client calls that fail while a broker is away:
//! exponential backoff from a first wait up to a ceiling, for a bounded time
//! or a bounded number of tries. Each call site names the policy it uses;
//! what to retry (the error's kind) stays with the caller.

use std::time::{Duration, Instant};

/// How long to wait between tries and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retry {
    first: Duration,
    max: Duration,
    limit: Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// Retry while less than this has passed since the first failure.
    For(Duration),
    /// Retry this many times.
    Times(u32),
}

impl Retry {
    /// Restoring and rebuilding state: a broker outage can last minutes,
    /// and the instance is not ready meanwhile.
    pub(super) const REBUILD: Retry = Retry {
        first: Duration::from_millis(200),
        max: Duration::from_secs(5),
        limit: Limit::For(Duration::from_secs(600)),
    };
    /// Aborting a transaction: past two minutes the coordinator has timed
    /// it out anyway, and the producer is re-created.
    pub(super) const ABORT: Retry = Retry {
        first: Duration::from_millis(200),
        max: Duration::from_secs(5),
        limit: Limit::For(Duration::from_secs(120)),
    };
    /// Initializing the transactions of a re-created producer.
    pub(super) const INIT_TRANSACTIONS: Retry = Retry {
        first: Duration::from_millis(500),
        max: Duration::from_secs(5),
        limit: Limit::For(Duration::from_secs(300)),
    };
    /// Committing: a few quick tries, then the cycle is aborted and redone.
    pub(super) const COMMIT: Retry = Retry {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
        limit: Limit::Times(5),
    };

    /// Starts counting tries (call after the first failure).
    pub(super) fn start(self) -> Attempts {
        Attempts {
            policy: self,
            started: Instant::now(),
            tries: 0,
            next: self.first,
        }
    }
}

/// The tries of one operation under a [`Retry`] policy.
#[derive(Debug)]
pub(super) struct Attempts {
    policy: Retry,
    started: Instant,
    tries: u32,
    next: Duration,
}

impl Attempts {
    /// The wait before the next try, or `None` when the policy is spent.
    fn next_delay(&mut self, now: Instant) -> Option<Duration> {
        let more = match self.policy.limit {
            Limit::For(budget) => now.saturating_duration_since(self.started) < budget,
            Limit::Times(n) => self.tries < n,
        };
        if !more {
            return None;
        }
        let delay = self.next;
        self.tries += 1;
        self.next = (self.next * 2).min(self.policy.max);
        Some(delay)
    }

    /// Waits before the next try; `false` when the policy is spent (give up).
    pub(super) async fn wait(&mut self) -> bool {
        match self.next_delay(Instant::now()) {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_ceiling() {
        let mut a = Retry::REBUILD.start();
        let now = a.started;
        let waits: Vec<u128> = (0..8)
            .map(|_| a.next_delay(now).map_or(0, |d| d.as_millis()))
            .collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn a_time_budget_ends_the_tries() {
        let mut a = Retry::ABORT.start();
        let start = a.started;
        assert!(a.next_delay(start + Duration::from_secs(119)).is_some());
        assert!(a.next_delay(start + Duration::from_secs(120)).is_none());
    }

    #[test]
    fn a_count_ends_the_tries() {
        let mut a = Retry::COMMIT.start();
        let now = a.started;
        let tries = std::iter::from_fn(|| a.next_delay(now)).count();
        assert_eq!(tries, 5);
        assert_eq!(a.next_delay(now), None);
    }
}
