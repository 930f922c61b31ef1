//! Live outcomes in the partition store: closing cuts and resolving
//! horizons as the watermark moves (see [`crate::state::monitor`]).
//!
//! Both happen before the event that moves the watermark is applied, so a
//! capture never holds that event, and a horizon is resolved before a
//! later event could age its daily buckets out. Each boundary crossed
//! costs one pass over the partition's customers (a cut every
//! `train.sample_every` of event time); an event that crosses none costs
//! two comparisons.

use super::{Id, PartitionStore};
use crate::event::Event;
use crate::state::monitor::{Cursor, MAX_CUTS_PER_STEP};
use crate::state::{Capture, MonitorRules, Predicted, Resolved};

impl PartitionStore {
    /// Before `event` is applied: closes the cuts and resolves the horizons
    /// its time moves the watermark past, and captures its customer at
    /// every cut still open before the event's time.
    pub(super) fn monitor_before(&mut self, rules: MonitorRules, event: &Event) {
        let clock = self.clock_ms.max(event.event_time_ms);
        self.monitor_advance(rules, clock);
        let Some(cursor) = self.cursor else {
            return;
        };
        let mut t = cursor.next_cut;
        while t < event.event_time_ms {
            self.capture(rules, &event.customer_id, t);
            t = t.saturating_add(rules.every_ms);
        }
    }

    /// The clock moves to `clock`: closes every cut and resolves every
    /// horizon the new watermark passes.
    pub(super) fn monitor_advance(&mut self, rules: MonitorRules, clock: i64) {
        if clock == i64::MIN {
            return;
        }
        let watermark = clock.saturating_sub(self.limits.allowed_lateness_ms);
        let passed = watermark.saturating_sub(1);
        let start = if self.clock_ms == i64::MIN {
            passed
        } else {
            self.watermark_ms().saturating_sub(1)
        };
        // What is before the watermark a store starts from was closed and
        // resolved by whoever committed the state it holds (or there was no
        // state).
        let cursor = *self.cursor.get_or_insert(Cursor {
            next_cut: rules.cut_after(start),
            next_resolution: rules
                .cut_after(start.saturating_sub(rules.horizon_ms))
                .saturating_add(rules.horizon_ms),
        });
        if passed < cursor.next_cut && passed < cursor.next_resolution {
            return;
        }
        if passed >= cursor.next_cut {
            let last = rules.cut_at_or_before(passed);
            let count = ((last - cursor.next_cut) / rules.every_ms + 1) as usize;
            let skipped = count.saturating_sub(MAX_CUTS_PER_STEP);
            if skipped > 0 {
                tracing::warn!(
                    skipped,
                    "The event-time clock jumped over more cuts than are closed at once; \
                     the earliest are not captured."
                );
            }
            let first = cursor.next_cut + skipped as i64 * rules.every_ms;
            let mut t = first;
            while t <= last {
                self.close_cut(rules, t);
                t += rules.every_ms;
            }
        }
        if passed >= cursor.next_resolution {
            let first_cut = cursor.next_resolution - rules.horizon_ms;
            self.resolve_due(rules, first_cut, watermark);
        }
        self.cursor = Some(Cursor {
            next_cut: rules.cut_after(passed).max(cursor.next_cut),
            next_resolution: (rules
                .cut_after(passed.saturating_sub(rules.horizon_ms))
                .saturating_add(rules.horizon_ms))
            .max(cursor.next_resolution),
        });
    }

    /// Captures the population of cut `t`: customers last active in
    /// `(t - lookback, t]` not captured there yet.
    fn close_cut(&mut self, rules: MonitorRules, t: i64) {
        let from = t.saturating_sub(rules.lookback_ms);
        let ids: Vec<Id> = self
            .customers
            .iter()
            .filter(|(_, slot)| {
                let last = slot.times().0;
                last > from && last <= t
            })
            .map(|(id, _)| Id::clone(id))
            .collect();
        for id in ids {
            self.capture(rules, &id, t);
        }
    }

    /// Captures `id` at cut `t` if it belongs to that cut's population and
    /// was not captured there: a copy of the state to score, and an
    /// unscored snapshot in the state.
    fn capture(&mut self, rules: MonitorRules, id: &str, t: i64) {
        if !self
            .customers
            .get(id)
            .and_then(|slot| slot.get())
            .is_some_and(|s| crate::state::monitor::captures(&rules, s, t))
        {
            return;
        }
        let key = self.key(id);
        let Some(state) = self.live(id) else {
            return;
        };
        let copy = Box::new(state.clone());
        state.open_snapshot(t);
        self.captures.push(Capture {
            customer_id: id.to_string(),
            cut_ms: t,
            state: copy,
        });
        self.dirty.insert(key);
    }

    /// Resolves every snapshot whose horizon ended before `watermark`, of
    /// the customers who may hold one (active after `first_cut - lookback`).
    fn resolve_due(&mut self, rules: MonitorRules, first_cut: i64, watermark: i64) {
        let from = first_cut.saturating_sub(rules.lookback_ms);
        let ids: Vec<Id> = self
            .customers
            .iter()
            .filter(|(_, slot)| slot.times().0 > from)
            .filter(|(_, slot)| {
                slot.get().is_some_and(|s| {
                    s.snapshots
                        .first()
                        .is_some_and(|f| f.cut_ms.saturating_add(rules.horizon_ms) < watermark)
                })
            })
            .map(|(id, _)| Id::clone(id))
            .collect();
        for id in ids {
            let Some(state) = self.live(&id) else {
                continue;
            };
            let done = state.resolve_snapshots(watermark, rules.horizon_ms);
            self.resolved
                .extend(done.into_iter().map(|(snapshot, realized)| Resolved {
                    customer_id: id.to_string(),
                    snapshot,
                    realized,
                }));
            self.dirty.insert(id);
        }
    }

    /// The customers captured since the last call, each with their state as
    /// of the cut, to score; fill each prediction in with
    /// [`PartitionStore::fill_snapshot`].
    pub fn take_captures(&mut self) -> Vec<Capture> {
        std::mem::take(&mut self.captures)
    }

    /// Fills in a prediction of `id`'s snapshot at `cut_ms`, in the state
    /// or among the resolved ones (a horizon that passed in the same
    /// cycle): the first fills the captured snapshot, each further one (a
    /// baseline, a shadow model) adds a snapshot of the same cut. Returns
    /// whether the snapshot was found.
    pub fn fill_snapshot(&mut self, id: &str, cut_ms: i64, p: &Predicted) -> bool {
        // A snapshot is in the state until resolved, and never in both
        // places: the state first (its few snapshots), the resolved ones
        // (a horizon that passed in the capturing cycle) only when not there.
        if self.fill_in_state(id, cut_ms, p) {
            return true;
        }
        let at = |r: &Resolved| r.customer_id == id && r.snapshot.cut_ms == cut_ms;
        let Some(i) = self.resolved.iter().position(at) else {
            return false;
        };
        let unscored = self.resolved[i..]
            .iter()
            .position(|r| at(r) && !r.snapshot.scored);
        match unscored {
            Some(j) => self.resolved[i + j].snapshot.fill(p),
            None => {
                let mut more = self.resolved[i].clone();
                more.snapshot.fill(p);
                self.resolved.push(more);
            }
        }
        true
    }

    fn fill_in_state(&mut self, id: &str, cut_ms: i64, p: &Predicted) -> bool {
        let has = self
            .customers
            .get(id)
            .and_then(|slot| slot.get())
            .is_some_and(|s| s.snapshots.iter().any(|x| x.cut_ms == cut_ms));
        if !has {
            return false;
        }
        let key = self.key(id);
        let Some(state) = self.live(id) else {
            return false;
        };
        let Some(first) = state.snapshots.iter().position(|s| s.cut_ms == cut_ms) else {
            return false;
        };
        let unscored = state.snapshots[first..]
            .iter()
            .take_while(|s| s.cut_ms == cut_ms)
            .position(|s| !s.scored);
        match unscored {
            Some(j) => state.snapshots[first + j].fill(p),
            None => {
                let mut more = state.snapshots[first].clone();
                more.fill(p);
                state.snapshots.insert(first + 1, more);
            }
        }
        self.dirty.insert(key);
        true
    }

    /// The snapshots resolved since the last call.
    pub fn take_resolved(&mut self) -> Vec<Resolved> {
        std::mem::take(&mut self.resolved)
    }
}
