//! The live continuation of a generated world: the same customers carry on
//! where the history ended, in the same order, with event times taken from
//! the wall clock, paced to a target rate (or as fast as possible).

use std::time::{Duration, Instant};

use super::behaviour::{Generator, GeneratorConfig, GeneratorSummary};
use crate::event::Event;

/// Events of the world after `cfg.end_ms()`, stamped with "now".
#[derive(Debug)]
pub struct Live {
    generator: Generator,
    last_ms: i64,
}

impl Live {
    /// Replays (without returning) the history of `cfg`, then continues it.
    /// With `cfg.days == 0` it starts at `cfg.start_ms` right away.
    pub fn after_history(cfg: &GeneratorConfig) -> Self {
        let mut generator = Generator::unbounded(cfg);
        generator.skip_until(cfg.end_ms());
        Live {
            generator,
            last_ms: i64::MIN,
        }
    }

    /// The next event with its time set to `now_ms` (never earlier than the
    /// previous one, so the stream stays in order if the clock steps back).
    pub fn next_event(&mut self, now_ms: i64) -> Option<Event> {
        let mut event = self.generator.next_event()?;
        self.last_ms = self.last_ms.max(now_ms);
        event.event_time_ms = self.last_ms;
        Some(event)
    }

    /// Counts so far (history included) and the archetype mix.
    pub fn summary(&self) -> GeneratorSummary {
        self.generator.summary()
    }
}

/// Spaces out sends to hold a target rate; without one, never waits.
#[derive(Debug)]
pub struct Pacer {
    per_second: Option<f64>,
    started: Instant,
    sent: u64,
}

impl Pacer {
    /// A pacer for `per_second` events per second (`None` or 0: unpaced).
    pub fn new(per_second: Option<f64>) -> Self {
        Pacer {
            per_second: per_second.filter(|r| *r > 0.0 && r.is_finite()),
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Records one send and says how long to wait before the next one.
    pub fn sent_one(&mut self) -> Duration {
        self.sent += 1;
        match self.per_second {
            None => Duration::ZERO,
            Some(rate) => {
                let due = Duration::from_secs_f64(self.sent as f64 / rate);
                due.saturating_sub(self.started.elapsed())
            }
        }
    }
}
