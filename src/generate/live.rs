//! The live continuation of a generated world: the same customers carry on
//! where the history ended, in the same order, with wall-clock event times.
//!
//! A live stream compresses the world (its days pass in minutes), but it
//! must not compress the people in it: stamped with the wall clock as they
//! come, a customer's session of a few minutes would arrive within a
//! second, and their sessions of several days would overlap, which is
//! what a bot looks like. [`PeoplePacing`] keeps each visit's own gaps
//! (a visit is a run of a customer's events without a [`VISIT_GAP_MS`]
//! pause) and starts a customer's next visit only after their previous one
//! ended: the days between visits shrink, the minutes within one do not.
//! Injected abusers ([`super::abuse`]) are paced the same way, so their
//! patterns arrive as fast as they were written.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use super::behaviour::{Generator, GeneratorConfig, GeneratorSummary};
use crate::event::Event;

/// A customer pause (world time) longer than this ends their visit.
pub const VISIT_GAP_MS: i64 = 30 * 60_000;

/// Wall time between a customer's visits in a live stream: the world's
/// pause, however long, shrinks to this.
pub const VISIT_BREAK_MS: i64 = 10 * 60_000;

/// Events of the world after `cfg.end_ms()`, merged with an optional
/// overlay (abusers), paced like people and stamped with the wall clock.
#[derive(Debug)]
pub struct Live {
    generator: Generator,
    /// The generator's next event, read ahead for the merge.
    next_world: Option<Event>,
    /// Overlay events not yet scheduled, latest first (popped from the end).
    overlay: Vec<Event>,
    pacing: PeoplePacing,
}

impl Live {
    /// Replays (without returning) the history of `cfg`, then continues it.
    /// With `cfg.days == 0` it starts at `cfg.start_ms` right away.
    pub fn after_history(cfg: &GeneratorConfig) -> Self {
        Self::with_overlay(cfg, Vec::new())
    }

    /// [`Live::after_history`] with `overlay`'s events (any order) merged in
    /// by event time.
    pub fn with_overlay(cfg: &GeneratorConfig, mut overlay: Vec<Event>) -> Self {
        let mut generator = Generator::unbounded(cfg);
        generator.skip_until(cfg.end_ms());
        overlay.sort_by_key(|e| Reverse(e.event_time_ms));
        Live {
            next_world: generator.next_event(),
            generator,
            overlay,
            pacing: PeoplePacing::new(VISIT_BREAK_MS),
        }
    }

    /// The next event with its time set to `now_ms` (never earlier than the
    /// previous one): the world as fast as it is asked for, people included
    /// (`--pace wall`, a load generator).
    pub fn next_event(&mut self, now_ms: i64) -> Option<Event> {
        let mut event = self.take()?;
        self.pacing.last_ms = self.pacing.last_ms.max(now_ms);
        event.event_time_ms = self.pacing.last_ms;
        Some(event)
    }

    /// The world's next event, overlay included (world time).
    fn take(&mut self) -> Option<Event> {
        let overlay_first = match (&self.next_world, self.overlay.last()) {
            (Some(w), Some(o)) => o.event_time_ms < w.event_time_ms,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if overlay_first {
            self.overlay.pop()
        } else {
            let next = self.generator.next_event();
            std::mem::replace(&mut self.next_world, next)
        }
    }

    /// Takes the world's next event (overlay included) and schedules it on
    /// the wall clock, now `now_ms`, paced like people (`--pace people`);
    /// `false` when the world has ended.
    pub fn pull(&mut self, now_ms: i64) -> bool {
        match self.take() {
            Some(e) => {
                self.pacing.schedule(e, now_ms);
                true
            }
            None => false,
        }
    }

    /// The next event due at `now_ms` (stamped with its due time), if any.
    pub fn pop_due(&mut self, now_ms: i64) -> Option<Event> {
        self.pacing.pop_due(now_ms)
    }

    /// When the earliest scheduled event is due (ms), if any is.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.pacing.next_due_ms()
    }

    /// Events scheduled and not yet due.
    pub fn scheduled(&self) -> usize {
        self.pacing.len()
    }

    /// Counts so far (history included) and the archetype mix.
    pub fn summary(&self) -> GeneratorSummary {
        self.generator.summary()
    }
}

/// Schedules a compressed world's events on the wall clock so that each
/// customer behaves like one person: within a visit, the world's gaps; a
/// next visit no sooner than `break_ms` after the previous one ended.
#[derive(Debug)]
pub struct PeoplePacing {
    break_ms: i64,
    visits: HashMap<String, Visit>,
    queue: BinaryHeap<Reverse<Due>>,
    seq: u64,
    last_ms: i64,
}

/// A customer's current visit: where it started in world and wall time,
/// and their latest event in both.
#[derive(Debug, Clone, Copy)]
struct Visit {
    world_start: i64,
    wall_start: i64,
    last_world: i64,
    last_due: i64,
}

#[derive(Debug)]
struct Due {
    at_ms: i64,
    seq: u64,
    event: Event,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

impl PeoplePacing {
    /// A pacing with `break_ms` of wall time between a customer's visits.
    pub fn new(break_ms: i64) -> Self {
        PeoplePacing {
            break_ms,
            visits: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            last_ms: i64::MIN,
        }
    }

    /// Schedules a world event (its `event_time_ms` is world time; a
    /// customer's events must come in world-time order) at wall time
    /// `now_ms` or later.
    pub fn schedule(&mut self, event: Event, now_ms: i64) {
        let t = event.event_time_ms;
        let break_ms = self.break_ms;
        let visit = self
            .visits
            .entry(event.customer_id.clone())
            .and_modify(|v| {
                if t - v.last_world > VISIT_GAP_MS {
                    // A new visit, once the last one is over.
                    v.world_start = t;
                    v.wall_start = now_ms.max(v.last_due.saturating_add(break_ms));
                }
            })
            .or_insert(Visit {
                world_start: t,
                wall_start: now_ms,
                last_world: t,
                last_due: now_ms,
            });
        let due = visit
            .wall_start
            .saturating_add(t.saturating_sub(visit.world_start));
        visit.last_world = t;
        visit.last_due = due;
        self.seq += 1;
        self.queue.push(Reverse(Due {
            at_ms: due,
            seq: self.seq,
            event,
        }));
    }

    /// The next event due at `now_ms`, stamped with its due time (never
    /// before the previous one, so the stream stays in order).
    pub fn pop_due(&mut self, now_ms: i64) -> Option<Event> {
        if self.queue.peek()?.0.at_ms > now_ms {
            return None;
        }
        let Reverse(due) = self.queue.pop()?;
        self.last_ms = self.last_ms.max(due.at_ms);
        let mut event = due.event;
        event.event_time_ms = self.last_ms;
        Some(event)
    }

    /// When the earliest scheduled event is due (ms).
    pub fn next_due_ms(&self) -> Option<i64> {
        self.queue.peek().map(|d| d.0.at_ms)
    }

    /// Events scheduled and not yet taken.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
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
