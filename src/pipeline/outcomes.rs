//! Live outcomes in the run loop: the cycle scores the customers its
//! partitions captured at a cut (their state as of the cut, featurized as
//! of the cut by the live model's featurizer, the trainer's code), fills
//! the predictions into their snapshots, and publishes the snapshots whose
//! horizon has passed as `Outcome` records, in the cycle's transaction
//! (see [`crate::state::monitor`]).

use super::output::{self, OutRecord};
use super::{Pipeline, PipelineError, TxnError};
use crate::event::proto::Outcome;
use crate::ingest;
use crate::state::{CustomerState, Predicted, Resolved};
use crate::train::examples::LabelRules;

impl Pipeline {
    /// Scores the captures of every partition and turns the resolved
    /// snapshots into outcome records (nothing without
    /// `output.outcomes_topic`).
    pub(super) async fn monitor_cycle(&mut self) -> Result<Vec<OutRecord>, TxnError> {
        if self.cfg.output.outcomes_topic.is_empty() {
            return Ok(Vec::new());
        }
        let partitions: Vec<i32> = self.partitions.stores.keys().copied().collect();
        let mut outcomes = Vec::new();
        for p in partitions {
            self.score_captures(p).await?;
            let Some(store) = self.partitions.stores.get_mut(&p) else {
                continue;
            };
            outcomes.extend(store.take_resolved());
        }
        let rules = LabelRules::from_config(&self.cfg.train);
        let resolved_at = ingest::now_ms();
        let mut unscored = 0usize;
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .filter(|r| {
                unscored += usize::from(!r.snapshot.scored);
                r.snapshot.scored
            })
            .map(|r| outcome_of(&rules, r, resolved_at))
            .collect();
        if unscored > 0 {
            // Captures are scored in the cycle that takes them, before the
            // resolutions are read: this would be a bug.
            tracing::error!(
                unscored,
                "Resolved snapshots without a prediction were dropped."
            );
        }
        self.telemetry.metrics.outcomes.observe(&outcomes);
        outcomes
            .iter()
            .map(|o| output::for_outcome(&self.cfg.output, o))
            .collect::<Result<_, _>>()
            .map_err(|e| TxnError::Fatal(PipelineError::Encode(e)))
    }

    /// Scores partition `p`'s captures with the live model, as of each
    /// one's cut, in micro-batches of one cut, and fills the predictions in.
    async fn score_captures(&mut self, p: i32) -> Result<(), TxnError> {
        let Some(store) = self.partitions.stores.get_mut(&p) else {
            return Ok(());
        };
        let mut captures = store.take_captures();
        if captures.is_empty() {
            return Ok(());
        }
        // Similar history lengths together (the model is given only as
        // many events as a batch's longest), one cut per batch.
        captures.sort_by_key(|c| (c.cut_ms, c.state.recent().len()));
        let max_batch = self.cfg.score.max_batch.max(1);
        let mut start = 0;
        while start < captures.len() {
            let cut = captures[start].cut_ms;
            let end = captures[start..]
                .iter()
                .take(max_batch)
                .take_while(|c| c.cut_ms == cut)
                .count()
                + start;
            let chunk = &captures[start..end];
            let model = self.scorer.current();
            let states: Vec<&CustomerState> = chunk.iter().map(|c| &*c.state).collect();
            let batch = model
                .featurizer
                .featurize(&states, cut)
                .map_err(|e| TxnError::Fatal(PipelineError::Features(e)))?;
            let scores = self
                .scorer
                .score(model.clone(), batch)
                .await
                .map_err(|e| TxnError::Abortable(format!("scoring snapshots failed: {e}")))?;
            let Some(store) = self.partitions.stores.get_mut(&p) else {
                return Ok(());
            };
            for (row, c) in chunk.iter().enumerate().take(scores.rows) {
                let best = crate::decide::argmax(scores.segment_probs(row)).unwrap_or(0);
                let predicted = Predicted {
                    model_version: scores.model_version.to_string(),
                    segment: scores.segments.get(best).cloned().unwrap_or_default(),
                    purchase_probability: scores.outputs.purchase_probability[row],
                    churn_probability: scores.outputs.churn_probability[row],
                    predicted_spend: scores.outputs.predicted_spend[row],
                };
                store.fill_snapshot(&c.customer_id, c.cut_ms, &predicted);
            }
            start = end;
        }
        Ok(())
    }
}

/// The outcome record of a resolved snapshot: the prediction, and the
/// trainer's labels of what happened.
pub(super) fn outcome_of(rules: &LabelRules, r: Resolved, resolved_at_ms: i64) -> Outcome {
    let s = r.snapshot;
    let labels = rules.labels(
        r.realized.purchases,
        r.realized.spend_minor,
        r.realized.active,
        s.purchased_before,
    );
    Outcome {
        customer_id: r.customer_id,
        cut_ms: s.cut_ms,
        horizon_ms: rules.horizon_ms,
        model_version: s.model_version,
        segment: s.segment,
        purchase_probability: s.purchase_probability,
        churn_probability: s.churn_probability,
        predicted_spend: s.predicted_spend,
        purchased: labels.purchased,
        churned: labels.churned,
        spend_minor: labels.spend_minor,
        realized_segment: labels.segment.name().to_string(),
        resolved_at_ms,
    }
}
