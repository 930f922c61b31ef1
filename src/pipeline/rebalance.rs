//! Partition ownership: rebalance notices taken by the loop, restoring a
//! newly assigned partition's state from the changelog before any of its
//! input, dropping revoked partitions, and rebuilding state from the
//! committed changelog after a failed transaction.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::clients::RebalanceNotice;
use super::retry::Retry;
use super::{kafka, Pipeline, PipelineError};
use crate::config::OffsetReset;
use crate::error::Classify;
use crate::state::changelog;
use crate::state::PartitionStore;

impl Pipeline {
    /// Records whether this thread holds its current assignment, restored
    /// (the instance is ready when every thread does).
    pub(super) fn set_assigned(&mut self, assigned: bool) {
        if assigned != self.telemetry.has_assignment {
            self.telemetry.has_assignment = assigned;
            if assigned {
                self.telemetry
                    .health
                    .assigned
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                self.telemetry
                    .health
                    .assigned
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub(super) async fn take_rebalances(&mut self) -> Result<(), PipelineError> {
        if !self
            .consumer
            .context()
            .pending
            .swap(false, Ordering::AcqRel)
        {
            return Ok(());
        }
        let notices: Vec<RebalanceNotice> = match self.consumer.context().events.lock() {
            Ok(mut e) => std::mem::take(&mut *e),
            Err(_) => Vec::new(),
        };
        for n in notices {
            match n {
                RebalanceNotice::Revoked(list) => {
                    // Rebalancing: not ready until the next assignment is restored.
                    self.set_assigned(false);
                    // The generation changed: the open transaction can no
                    // longer commit its offsets. Abort; the new owner redoes it.
                    if let Err(e) = self.abort_cycle("partitions were revoked").await {
                        self.after_fatal(e).await?;
                    }
                    let list: Vec<(Arc<str>, i32)> = list
                        .iter()
                        .map(|(t, p)| (self.intake.topic(t), *p))
                        .collect();
                    for (t, p) in &list {
                        self.telemetry.metrics.forget_lag(t, *p);
                    }
                    let revoked = self.partitions.revoke(&list);
                    self.thread
                        .directory
                        .revoked(self.thread.index, &revoked.partitions);
                    // Uncommitted changes of kept partitions are gone too: rebuild.
                    self.recover().await?;
                    info!(partitions = ?list, "Partitions revoked.");
                }
                RebalanceNotice::Assigned(list) => {
                    let interned: Vec<(Arc<str>, i32)> = list
                        .iter()
                        .map(|(t, p)| (self.intake.topic(t), *p))
                        .collect();
                    let new = self.partitions.assign(interned.iter().cloned());
                    // librdkafka keeps a partition paused through a
                    // revocation and a new assignment, while the merge's
                    // record of pauses went with the revocation: a
                    // partition paused when revoked would never be resumed
                    // (the consumer stalled on it). Every assigned
                    // partition starts unpaused.
                    self.resume(&interned);
                    self.load_committed(&list).await?;
                    let restore_started = Instant::now();
                    self.restore(new).await?;
                    self.set_assigned(true);
                    info!(
                        partitions = ?list,
                        restore_seconds = restore_started.elapsed().as_secs_f64(),
                        "Partitions assigned and restored."
                    );
                }
            }
        }
        Ok(())
    }

    /// Restores partitions' state, all in parallel, retrying while the
    /// broker is unreachable.
    pub(super) async fn restore(&mut self, partitions: Vec<i32>) -> Result<(), PipelineError> {
        if partitions.is_empty() {
            return Ok(());
        }
        self.thread
            .directory
            .restoring(self.thread.index, &partitions);
        let restored = self.restore_retrying(&partitions).await;
        if restored.is_ok() {
            self.thread
                .directory
                .restored(self.thread.index, &partitions);
        }
        restored
    }

    /// Restores, retrying external failures (the broker unreachable, a
    /// transaction left open) with the rebuild policy; any other failure
    /// ends the run at once.
    pub(super) async fn restore_retrying(
        &mut self,
        partitions: &[i32],
    ) -> Result<(), PipelineError> {
        let mut attempts = Retry::REBUILD.start();
        loop {
            match self.restore_once(partitions.to_vec()).await {
                Err(PipelineError::Restore(e)) if e.class().retriable() => {
                    warn!(partitions = ?partitions, error = %e, "Restore failed; retrying.");
                    if !attempts.wait().await {
                        return Err(PipelineError::Restore(e));
                    }
                }
                other => return other,
            }
        }
    }

    pub(super) async fn restore_once(&mut self, partitions: Vec<i32>) -> Result<(), PipelineError> {
        // The restore reader assigns, joins nothing and commits nothing, but
        // librdkafka assigns only with a group id: one of its own, next to
        // the pipeline's (a prefix ACL on kafka.group_id covers it), so that
        // it never shares the pipeline's group.
        let group = format!("{}-restore", self.cfg.kafka.group_id);
        let client = crate::config::reader_config(&self.cfg.kafka, &group, true)?;
        // Counted once the reader is built: every path below undoes it.
        self.telemetry
            .health
            .restoring
            .fetch_add(1, Ordering::Relaxed);
        let topic = self.cfg.state.changelog_topic.clone();
        let limits = self.cfg.store_limits();
        let metrics = self.telemetry.metrics.clone();
        let timeout = self.cfg.state.restore_timeout;
        // The restore has its own budget (state.restore_timeout); the
        // watchdog ends the instance only if it overruns that as well.
        let result = self
            .watchdog
            .call_within("restore", timeout + Duration::from_secs(30), move || {
                let mut stores: BTreeMap<i32, PartitionStore> = partitions
                    .iter()
                    .map(|p| (*p, PartitionStore::new(limits)))
                    .collect();
                changelog::restore_partitions(&client, &topic, &mut stores, &metrics, timeout)
                    .map(|_| stores)
            })
            .await;
        self.telemetry
            .health
            .restoring
            .fetch_sub(1, Ordering::Relaxed);
        let stores = result??;
        self.partitions.install(stores);
        Ok(())
    }

    /// Drops local state of the partitions still owned, restores it from the
    /// changelog and rewinds their input to the committed offsets.
    pub(super) async fn reset_kept(&mut self) -> Result<(), PipelineError> {
        // Buffered records are consumed again from the committed offsets.
        let reset = self.partitions.reset();
        self.resume(&reset.resume);
        self.restore(reset.restore).await?;
        if self.partitions.assigned.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &self.partitions.assigned {
            tpl.add_partition(t, *p);
        }
        let consumer = self.consumer.clone();
        let committed = self
            .watchdog
            .call("committed_offsets", move |t| {
                consumer.committed_offsets(tpl, t)
            })
            .await?
            .map_err(kafka("reading committed offsets"))?;
        let mut seek = TopicPartitionList::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => match self.cfg.input.auto_offset_reset {
                    OffsetReset::Earliest => Offset::Beginning,
                    OffsetReset::Latest => Offset::End,
                },
            };
            seek.add_partition_offset(e.topic(), e.partition(), offset)
                .map_err(kafka("building the rewind to the committed offsets"))?;
        }
        let consumer = self.consumer.clone();
        self.watchdog
            .call("seek_partitions", move |t| {
                consumer.seek_partitions(seek, t)
            })
            .await?
            .map_err(kafka("rewinding to the committed offsets"))?;
        Ok(())
    }

    /// [`Pipeline::reset_kept`], retried with backoff while the broker is
    /// unreachable (any external failure; the instance is not ready
    /// meanwhile).
    pub(super) async fn recover(&mut self) -> Result<(), PipelineError> {
        let mut attempts = Retry::REBUILD.start();
        loop {
            match self.reset_kept().await {
                Ok(()) => return Ok(()),
                Err(e) if e.class().retriable() => {
                    warn!(error = %e, "Rebuilding state failed; retrying.");
                    self.telemetry
                        .health
                        .restoring
                        .fetch_add(1, Ordering::Relaxed);
                    let more = attempts.wait().await;
                    self.telemetry
                        .health
                        .restoring
                        .fetch_sub(1, Ordering::Relaxed);
                    if !more {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the group's committed offsets of newly assigned partitions (the
    /// lag gauge's starting point; afterwards each commit moves it).
    pub(super) async fn load_committed(
        &mut self,
        list: &[(String, i32)],
    ) -> Result<(), PipelineError> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in list {
            tpl.add_partition(t, *p);
        }
        let consumer = self.consumer.clone();
        let reset = self.cfg.input.auto_offset_reset;
        let found = self.watchdog.call("committed_offsets", move |timeout| {
            let committed = consumer.committed_offsets(tpl, timeout)?;
            let mut found = Vec::new();
            for e in committed.elements() {
                let next = match e.offset() {
                    Offset::Offset(o) => o,
                    // Nothing committed yet: the group starts at an end.
                    _ => {
                        let (low, high) =
                            consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
                        match reset {
                            OffsetReset::Earliest => low,
                            OffsetReset::Latest => high,
                        }
                    }
                };
                found.push((e.topic().to_string(), e.partition(), next));
            }
            Ok::<_, KafkaError>(found)
        });
        match found.await? {
            Ok(found) => {
                for (t, p, next) in found {
                    let t = self.intake.topic(&t);
                    self.partitions.committed.insert((t, p), next);
                }
            }
            Err(e) => warn!(
                error = %e,
                "Could not read the committed offsets of the assigned partitions; \
                 their lag shows after the first commit."
            ),
        }
        Ok(())
    }
}
