//! Liveness: no blocking Kafka client call and no stalled commit cycle goes
//! unnoticed, whatever librdkafka does.
//!
//! librdkafka can block a transactional call far past the timeout it was
//! given: `rd_kafka_send_offsets_to_transaction` waits on a condition
//! variable without a deadline when the transaction coordinator moves during
//! the call (confluentinc/librdkafka#5456, fix proposed in PR #5457; related
//! #5511; still open in the bundled 2.12.1). A thread stuck like that can be
//! neither cancelled nor joined, and the client it holds cannot be destroyed.
//! An instance in that state keeps its partitions, looks ready and processes
//! nothing until the group expels it (`max.poll.interval.ms`), and then
//! still does not exit.
//!
//! So every blocking client call of the run loop goes through
//! [`Watchdog::call`]: it runs on a blocking thread (never on an async
//! worker), gets librdkafka timeout [`Watchdog::timeout`], and is watched
//! against `pipeline.call_deadline`, which segstream enforces itself. A call
//! that overruns it is fatal: one ERROR line names the call, `/healthz` and
//! `/readyz` turn 503, and the process exits with [`EXIT_STALLED`] so that
//! the orchestrator restarts it. The restarted producer has the same
//! transactional id, so `init_transactions` fences the stuck one's epoch and
//! aborts its open transaction; nothing it did is committed twice.
//!
//! A second check catches a stall anywhere else: partitions assigned, a
//! backlog (input lag or consumed-but-uncommitted records), no restore
//! running and no committed cycle for `pipeline.stall_timeout` make the
//! instance unhealthy (`/healthz` 503, `segstream_stalled` 1) until a cycle
//! commits again. That one does not exit by itself: a broker outage looks
//! the same, and the liveness probe decides.
//!
//! Fault injection (tests only): `SEGSTREAM_FAULT_HANG=<call>@<n>` makes the
//! n-th call named `<call>` (e.g. `send_offsets_to_transaction@5`) block
//! forever before it reaches librdkafka, exactly as the bug does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::{Health, PipelineError};
use crate::config::PipelineConfig;
use crate::telemetry::Metrics;

/// Exit status of an instance that ended itself because a client call hung.
pub const EXIT_STALLED: i32 = 3;

/// How often the watchdog thread looks.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Watches blocking client calls and commit progress. Cheap to clone; each
/// stream thread reports its progress on its own lane ([`Watchdog::lane`]).
#[derive(Clone)]
pub struct Watchdog {
    inner: Arc<Inner>,
    lane: usize,
}

struct Inner {
    calls: Mutex<BTreeMap<u64, Call>>,
    next_call: AtomicU64,
    progress: Mutex<Vec<Progress>>,
    health: Arc<Health>,
    metrics: Metrics,
    call_deadline: Duration,
    stall_timeout: Duration,
    stop: AtomicBool,
    hang: Option<Hang>,
}

struct Call {
    what: &'static str,
    started: Instant,
    deadline: Duration,
}

struct Progress {
    last_commit: Instant,
    assigned: usize,
    backlog: i64,
    stalled: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            last_commit: Instant::now(),
            assigned: 0,
            backlog: 0,
            stalled: false,
        }
    }
}

/// The fault-injection hook: the `nth` call named `what` never returns
/// (`what@nth`), or returns only after a delay (`what@nth+8s`).
struct Hang {
    what: String,
    nth: u64,
    seen: AtomicU64,
    delay: Option<Duration>,
}

impl Hang {
    fn from_env() -> Option<Hang> {
        let spec = std::env::var("SEGSTREAM_FAULT_HANG")
            .ok()
            .filter(|s| !s.is_empty())?;
        Hang::parse(&spec)
    }

    fn parse(spec: &str) -> Option<Hang> {
        let (spec, delay) = match spec.split_once('+') {
            Some((s, d)) => (s, Some(humantime::parse_duration(d.trim()).ok()?)),
            None => (spec, None),
        };
        let (what, nth) = match spec.split_once('@') {
            Some((w, n)) => (w.to_string(), n.trim().parse().ok()?),
            None => (spec.to_string(), 1),
        };
        Some(Hang {
            what,
            nth,
            seen: AtomicU64::new(0),
            delay,
        })
    }

    fn hit(&self, what: &str) -> bool {
        what == self.what && self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.nth
    }
}

/// Unregisters a call when it returns (or its future is dropped).
struct CallGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.inner.calls.lock() {
            calls.remove(&self.id);
        }
    }
}

impl Watchdog {
    /// Starts the watchdog thread; it stops when the last clone is dropped
    /// or [`Watchdog::stop`] is called.
    pub fn start(
        cfg: &PipelineConfig,
        health: Arc<Health>,
        metrics: Metrics,
    ) -> Result<Watchdog, PipelineError> {
        let hang = Hang::from_env();
        if let Some(h) = &hang {
            tracing::warn!(call = %h.what, nth = h.nth, delay = ?h.delay, "Fault injection: this call will hang, or be delayed (SEGSTREAM_FAULT_HANG).");
        }
        let inner = Arc::new(Inner {
            calls: Mutex::new(BTreeMap::new()),
            next_call: AtomicU64::new(0),
            progress: Mutex::new(vec![Progress::new()]),
            health,
            metrics,
            call_deadline: cfg.call_deadline,
            stall_timeout: cfg.stall_timeout,
            stop: AtomicBool::new(false),
            hang,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("segstream-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(CHECK_EVERY);
                let Some(inner) = weak.upgrade() else { return };
                if inner.stop.load(Ordering::Relaxed) {
                    return;
                }
                inner.check(Instant::now());
            })
            .map_err(|e| PipelineError::Task(format!("starting the watchdog: {e}")))?;
        Ok(Watchdog { inner, lane: 0 })
    }

    /// The same watchdog, reporting progress for stream thread `lane`.
    pub fn lane(&self, lane: usize) -> Watchdog {
        if let Ok(mut p) = self.inner.progress.lock() {
            while p.len() <= lane {
                p.push(Progress::new());
            }
        }
        Watchdog {
            inner: self.inner.clone(),
            lane,
        }
    }

    /// The timeout handed to librdkafka: two thirds of the deadline, so that
    /// a call that honours its timeout returns (as a retriable error) well
    /// before the watchdog would end the instance.
    pub fn timeout(&self) -> Duration {
        self.inner.call_deadline * 2 / 3
    }

    /// Runs the blocking client call `f` (given [`Watchdog::timeout`]) on a
    /// blocking thread under `pipeline.call_deadline`.
    pub async fn call<T, F>(&self, what: &'static str, f: F) -> Result<T, PipelineError>
    where
        F: FnOnce(Duration) -> T + Send + 'static,
        T: Send + 'static,
    {
        let timeout = self.timeout();
        self.call_within(what, self.inner.call_deadline, move || f(timeout))
            .await
    }

    /// Runs `f` on a blocking thread; the instance ends if it has not
    /// returned after `deadline` (for calls with a longer budget of their
    /// own, such as a restore).
    pub async fn call_within<T, F>(
        &self,
        what: &'static str,
        deadline: Duration,
        f: F,
    ) -> Result<T, PipelineError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let id = self.inner.next_call.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut calls) = self.inner.calls.lock() {
            calls.insert(
                id,
                Call {
                    what,
                    started: Instant::now(),
                    deadline,
                },
            );
        }
        let _guard = CallGuard {
            inner: &self.inner,
            id,
        };
        let hang = self
            .inner
            .hang
            .as_ref()
            .filter(|h| h.hit(what))
            .map(|h| h.delay);
        tokio::task::spawn_blocking(move || {
            match hang {
                Some(Some(delay)) => std::thread::sleep(delay),
                Some(None) => loop {
                    std::thread::sleep(Duration::from_secs(3600));
                },
                None => {}
            }
            f()
        })
        .await
        .map_err(|e| PipelineError::Task(format!("{what}: {e}")))
    }

    /// A cycle committed, or the run loop found nothing waiting: progress.
    pub fn progressed(&self) {
        self.on_lane(|p| p.last_commit = Instant::now());
    }

    /// The run loop's view, once a second: assigned partitions and backlog
    /// (input lag plus consumed-but-uncommitted records).
    pub fn observe(&self, assigned: usize, backlog: i64) {
        self.on_lane(|p| {
            p.assigned = assigned;
            p.backlog = backlog;
        });
    }

    fn on_lane(&self, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut lanes) = self.inner.progress.lock() {
            if let Some(p) = lanes.get_mut(self.lane) {
                f(p);
            }
        }
    }

    /// Stops the watchdog thread (the instance is shutting down).
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

impl Inner {
    fn check(&self, now: Instant) {
        let overrun = self.calls.lock().ok().and_then(|calls| {
            calls
                .values()
                .find(|c| now.duration_since(c.started) > c.deadline)
                .map(|c| (c.what, now.duration_since(c.started), c.deadline))
        });
        if let Some((what, elapsed, deadline)) = overrun {
            self.fatal(what, elapsed, deadline);
        }
        let restoring = self.health.restoring.load(Ordering::Relaxed) > 0;
        let Ok(mut lanes) = self.progress.lock() else {
            return;
        };
        for (thread, p) in lanes.iter_mut().enumerate() {
            let since = now.duration_since(p.last_commit);
            let stalled =
                p.assigned > 0 && p.backlog > 0 && !restoring && since > self.stall_timeout;
            if stalled != p.stalled {
                p.stalled = stalled;
                if stalled {
                    error!(
                        thread,
                        seconds = since.as_secs(),
                        backlog = p.backlog,
                        partitions = p.assigned,
                        "No cycle committed for pipeline.stall_timeout while records wait; \
                         the instance reports unhealthy until a cycle commits."
                    );
                } else {
                    info!(thread, "A cycle committed again.");
                }
            }
        }
        // Unhealthy while any stream thread is stalled.
        let any = lanes.iter().any(|p| p.stalled);
        if any != self.health.stalled.load(Ordering::Relaxed) {
            self.health.stalled.store(any, Ordering::Relaxed);
            self.metrics.stalled.set(i64::from(any));
            if !any {
                info!("Every stream thread commits again; the instance is healthy.");
            }
        }
    }

    /// A call overran its deadline: unhealthy, one clear line, exit.
    fn fatal(&self, what: &str, elapsed: Duration, deadline: Duration) -> ! {
        self.health.fatal.store(true, Ordering::Relaxed);
        self.metrics.stalled.set(1);
        error!(
            call = what,
            seconds = elapsed.as_secs_f64(),
            deadline_seconds = deadline.as_secs_f64(),
            exit_code = EXIT_STALLED,
            "A Kafka client call is blocked past pipeline.call_deadline (see librdkafka#5456); \
             the instance is unhealthy and exits so that it is restarted and its producer fenced."
        );
        // Let the log line out and the probes see 503 for a moment; the
        // stuck thread cannot be joined, so no destructor runs.
        std::thread::sleep(Duration::from_millis(500));
        std::process::exit(EXIT_STALLED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watchdog(deadline_ms: u64, stall_ms: u64) -> (Watchdog, Arc<Health>) {
        let health = Arc::new(Health::default());
        let cfg = PipelineConfig {
            call_deadline: Duration::from_millis(deadline_ms),
            stall_timeout: Duration::from_millis(stall_ms),
            ..PipelineConfig::default()
        };
        let w = Watchdog::start(&cfg, health.clone(), Metrics::new().unwrap()).unwrap();
        w.stop();
        (w, health)
    }

    #[test]
    fn the_librdkafka_timeout_leaves_room_before_the_deadline() {
        let (w, _) = watchdog(45_000, 60_000);
        assert_eq!(w.timeout(), Duration::from_secs(30));
    }

    #[test]
    fn a_backlog_without_commits_is_a_stall_until_a_commit() {
        let (w, health) = watchdog(45_000, 1_000);
        let t0 = Instant::now();
        w.observe(3, 10);
        w.inner.check(t0);
        assert!(health.healthy(), "not yet past stall_timeout");
        w.inner.check(t0 + Duration::from_secs(2));
        assert!(!health.healthy());
        assert_eq!(w.inner.metrics.stalled.get(), 1);
        w.progressed();
        w.inner.check(Instant::now());
        assert!(health.healthy());
        assert_eq!(w.inner.metrics.stalled.get(), 0);
    }

    #[test]
    fn one_stalled_stream_thread_is_enough_and_others_cannot_hide_it() {
        let (w, health) = watchdog(45_000, 1_000);
        let (a, b) = (w.lane(0), w.lane(1));
        a.observe(2, 10);
        b.observe(2, 10);
        a.progressed();
        let t = Instant::now() + Duration::from_secs(2);
        // Only lane 0 makes progress from here on.
        w.inner.check(t);
        assert!(!health.healthy(), "both lanes are past stall_timeout");
        if let Ok(mut p) = w.inner.progress.lock() {
            p[0].last_commit = t;
        }
        w.inner.check(t);
        assert!(!health.healthy(), "lane 1 still stalls");
        b.progressed();
        if let Ok(mut p) = w.inner.progress.lock() {
            p[1].last_commit = t;
        }
        w.inner.check(t);
        assert!(health.healthy());
    }

    #[test]
    fn no_backlog_or_no_partitions_or_a_restore_is_not_a_stall() {
        let (w, health) = watchdog(45_000, 1_000);
        let later = Instant::now() + Duration::from_secs(5);
        w.observe(3, 0);
        w.inner.check(later);
        assert!(health.healthy());
        w.observe(0, 10);
        w.inner.check(later);
        assert!(health.healthy());
        w.observe(3, 10);
        health.restoring.fetch_add(1, Ordering::Relaxed);
        w.inner.check(later);
        assert!(health.healthy());
    }

    #[test]
    fn the_nth_named_call_hangs() {
        let h = Hang::parse("commit_transaction@2").unwrap();
        assert_eq!(h.delay, None);
        let d = Hang::parse("restore@1+8s").unwrap();
        assert_eq!(
            (d.what.as_str(), d.nth, d.delay),
            ("restore", 1, Some(Duration::from_secs(8)))
        );
        assert!(Hang::parse("restore@x").is_none());
        assert!(!h.hit("commit_transaction"));
        assert!(!h.hit("abort_transaction"));
        assert!(h.hit("commit_transaction"));
        assert!(!h.hit("commit_transaction"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_call_runs_off_the_async_workers_and_is_unregistered_after() {
        let (w, _) = watchdog(45_000, 60_000);
        let on_worker = w
            .call("fetch_metadata", |_| {
                tokio::runtime::Handle::try_current().is_ok()
                    && std::thread::current()
                        .name()
                        .is_some_and(|n| n.starts_with("tokio-runtime-worker"))
            })
            .await
            .unwrap();
        assert!(!on_worker);
        assert!(w.inner.calls.lock().unwrap().is_empty());
    }
}
