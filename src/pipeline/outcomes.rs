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
use crate::telemetry::drift::{Quantity, Scored};
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
            // The baselines read the customer features of this very batch.
            let rows =
                customer_rows(&batch).map_err(|e| TxnError::Fatal(PipelineError::Features(e)))?;
            let scores = self
                .scorer
                .score(model.clone(), batch)
                .await
                .map_err(|e| TxnError::Abortable(format!("scoring snapshots failed: {e}")))?;
            let Some(store) = self.partitions.stores.get_mut(&p) else {
                return Ok(());
            };
            // The champion's features, binned against its drift reference.
            let f = crate::features::CUSTOMER_DIM;
            let reference = model
                .manifest
                .reference
                .as_ref()
                .filter(|r| r.features.len() == f);
            let bins: Vec<Vec<u8>> = match reference {
                Some(r) => rows.chunks(f).map(|row| r.feature_bins(row)).collect(),
                None => Vec::new(),
            };
            for (row, c) in chunk.iter().enumerate().take(scores.rows) {
                let mut predicted = predicted_of(&scores, row, "");
                if let Some(b) = bins.get(row) {
                    predicted.feature_bins.clone_from(b);
                }
                store.fill_snapshot(&c.customer_id, c.cut_ms, &predicted);
            }
            if reference.is_none() {
                self.telemetry
                    .metrics
                    .drift
                    .served_without_reference(&scores.model_version);
            }
            if let Some(r) = reference {
                let o = &scores.outputs;
                let all = crate::model::drift::quantity_bins(
                    r,
                    &bins,
                    [
                        &o.purchase_probability,
                        &o.churn_probability,
                        &o.predicted_spend,
                    ],
                );
                let quantities: Vec<Quantity<'_>> = r
                    .features
                    .iter()
                    .chain(&r.outputs)
                    .map(|b| Quantity {
                        name: &b.name,
                        shares: &b.shares,
                    })
                    .collect();
                self.telemetry.metrics.drift.observe(Scored {
                    version: &scores.model_version,
                    cut_ms: cut,
                    quantities: &quantities,
                    bins: &all,
                });
            }
            // The baselines, on the same customers as of the same cut.
            for (row, predicted) in baselines_of(model.featurizer.spec(), &rows) {
                let c = &chunk[row];
                store.fill_snapshot(&c.customer_id, c.cut_ms, &predicted);
            }
            // The shadow models, each with its own featurizer.
            for shadow in self.scorer.shadows().iter() {
                let batch = shadow
                    .featurizer
                    .featurize(&states, cut)
                    .map_err(|e| TxnError::Fatal(PipelineError::Features(e)))?;
                let scores = self
                    .scorer
                    .score(shadow.clone(), batch)
                    .await
                    .map_err(|e| {
                        TxnError::Abortable(format!("scoring shadow snapshots failed: {e}"))
                    })?;
                let Some(store) = self.partitions.stores.get_mut(&p) else {
                    return Ok(());
                };
                for (row, c) in chunk.iter().enumerate().take(scores.rows) {
                    let predicted = predicted_of(&scores, row, SHADOW);
                    store.fill_snapshot(&c.customer_id, c.cut_ms, &predicted);
                }
            }
            start = end;
        }
        Ok(())
    }
}

/// A served model's prediction for row `row` of `scores`.
fn predicted_of(scores: &crate::score::Scores, row: usize, role: &str) -> Predicted {
    let best = crate::decide::argmax(scores.segment_probs(row)).unwrap_or(0);
    Predicted {
        model_version: scores.model_version.to_string(),
        segment: scores.segments.get(best).cloned().unwrap_or_default(),
        purchase_probability: scores.outputs.purchase_probability[row],
        churn_probability: scores.outputs.churn_probability[row],
        predicted_spend: scores.outputs.predicted_spend[row],
        role: role.to_string(),
        feature_bins: Vec::new(),
    }
}

/// `role` of a shadow model's snapshots and outcomes.
pub const SHADOW: &str = "shadow";
/// `role` of a baseline's snapshots and outcomes.
pub const BASELINE: &str = "baseline";

/// `model_version` of the rule-model baseline.
pub const RFM_RULES: &str = "rfm_rules";
/// `model_version` of the BG/NBD + Gamma-Gamma baseline.
pub const BGNBD: &str = "bgnbd_gamma_gamma";

/// The customer-feature rows of a feature batch ([rows, F], concatenated).
fn customer_rows(
    batch: &arrow_array::RecordBatch,
) -> Result<Vec<f32>, crate::features::FeatureError> {
    use crate::features::{tensors, FeatureError, TensorData};
    tensors(batch)?
        .into_iter()
        .find_map(|v| match (v.name == "customer_features", v.data) {
            (true, TensorData::F32(d)) => Some(d.to_vec()),
            _ => None,
        })
        .ok_or_else(|| FeatureError::Layout("customer_features is missing".into()))
}

/// The baselines' predictions from customer-feature rows ([rows, F],
/// concatenated, as the served model's featurizer computed them; row
/// index, then prediction): the recency/frequency/monetary rule model
/// (`model::rules`, the trainer's "RFM rules" row) and, when the served
/// model's feature spec has them, BG/NBD with Gamma-Gamma at the parameters
/// fitted when it was trained (the trainer's "BG/NBD + Gamma-Gamma" row:
/// churn is "no purchase", no segment). Both read only customer features.
pub(super) fn baselines_of(
    spec: &crate::features::FeatureSpec,
    rows: &[f32],
) -> Vec<(usize, Predicted)> {
    use crate::features::CUSTOMER_DIM;
    use crate::model::Segment;
    let n = rows.len() / CUSTOMER_DIM;
    let rules = crate::model::rules::forward(
        spec,
        crate::model::reference::Inputs {
            event_kind: &[],
            event_category: &[],
            event_numeric: &[],
            event_text: &[],
            event_mask: &[],
            customer_features: rows,
        },
    );
    let k = Segment::COUNT;
    let mut out = Vec::with_capacity(n * 2);
    for i in 0..n {
        let best = rules
            .segment_probs
            .get(i * k..(i + 1) * k)
            .and_then(crate::decide::argmax)
            .and_then(Segment::from_index);
        out.push((
            i,
            Predicted {
                model_version: RFM_RULES.to_string(),
                segment: best.map(|s| s.name().to_string()).unwrap_or_default(),
                purchase_probability: rules.purchase_probability[i],
                churn_probability: rules.churn_probability[i],
                predicted_spend: rules.predicted_spend[i],
                role: BASELINE.to_string(),
                feature_bins: Vec::new(),
            },
        ));
    }
    if let Some(c) = spec.classical {
        for (i, row) in rows.chunks(CUSTOMER_DIM).enumerate() {
            let (p, spend) = c
                .predict(&spec.normalization, row)
                .map_or((c.never_rate, 0.0), |p| (p.p_purchase, p.spend));
            out.push((
                i,
                Predicted {
                    model_version: BGNBD.to_string(),
                    segment: String::new(),
                    purchase_probability: p as f32,
                    churn_probability: (1.0 - p) as f32,
                    predicted_spend: spend as f32,
                    role: BASELINE.to_string(),
                    feature_bins: Vec::new(),
                },
            ));
        }
    }
    out
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
        role: if s.role.is_empty() {
            "champion".to_string()
        } else {
            s.role
        },
        feature_bins: if s.feature_bins.is_empty() {
            Vec::new()
        } else {
            (0..crate::features::CUSTOMER_DIM)
                .filter_map(|j| crate::model::drift::unpacked(&s.feature_bins, j))
                .map(|b| b as u32)
                .collect()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::classical::{BgNbd, Classical, GammaGamma};
    use crate::features::{FeatureSpec, Featurizer};
    use crate::generate::behaviour::{history, GeneratorConfig};
    use crate::model::Segment;
    use crate::state::tests::state_of;
    use crate::state::StateLimits;
    use crate::train::btyd::Baseline;
    use crate::train::examples::{build, LabelRules, Sampling};
    use crate::units::DAY_MS;

    /// The live baselines are the trainer's baseline rows: at every example
    /// of a replayed history, `baselines` on the replay state as of the cut
    /// gives what `train::baselines::rules` and `btyd::Baseline::predict`
    /// give on the example's features.
    #[test]
    fn live_baselines_equal_the_trainers_baseline_rows() {
        let limits = StateLimits::default();
        let plain = Featurizer::new(FeatureSpec::for_state(limits), limits)
            .unwrap_or_else(|e| panic!("{e}"));
        let classical = Classical {
            bgnbd: BgNbd {
                r: 0.8,
                alpha: 20.0,
                a: 0.7,
                b: 3.0,
            },
            gamma_gamma: Some(GammaGamma {
                p: 6.0,
                q: 4.0,
                gamma: 5_000.0,
            }),
            horizon_days: 30.0,
            never_rate: 0.125,
        };
        let spec = FeatureSpec {
            classical: Some(classical),
            ..plain.spec().clone()
        };
        let featurizer = Featurizer::new(spec, limits).unwrap_or_else(|e| panic!("{e}"));
        let gen = GeneratorConfig {
            customers: 60,
            days: 60,
            seed: 4,
            ..GeneratorConfig::default()
        };
        let events: Vec<crate::event::Event> = history(&gen).collect();
        let rules = LabelRules {
            horizon_ms: 14 * DAY_MS,
            high_value_spend_minor: 50_000,
        };
        let (set, _) = build(
            events.clone(),
            &featurizer,
            limits,
            rules,
            Sampling::all(7 * DAY_MS, 30 * DAY_MS, 0.0),
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(set.len() > 100, "{} examples", set.len());
        let spec = featurizer.spec();
        let trainer_rules = crate::train::baselines::rules(spec, &set);
        let trainer_btyd = Baseline {
            classical: Some(classical),
            never_rate: classical.never_rate,
        }
        .predict(spec, &set, Segment::COUNT);
        for i in 0..set.len() {
            let (customer, cut) = (&set.customers[set.customer[i] as usize], set.cut_ms[i]);
            let mine: Vec<crate::event::Event> = events
                .iter()
                .filter(|e| &e.customer_id == customer && e.event_time_ms <= cut)
                .cloned()
                .collect();
            let state = state_of(&mine, limits);
            let batch = featurizer
                .featurize(&[&state], cut)
                .unwrap_or_else(|e| panic!("{e}"));
            let rows = customer_rows(&batch).unwrap_or_else(|e| panic!("{e}"));
            // The live customer features are the example's (what drift's
            // bins are taken of).
            assert_eq!(rows.as_slice(), set.customer_features_of(i));
            let live = baselines_of(featurizer.spec(), &rows);
            assert_eq!(live.len(), 2);
            let (r, b) = (&live[0].1, &live[1].1);
            assert_eq!(
                (r.model_version.as_str(), b.model_version.as_str()),
                (RFM_RULES, BGNBD)
            );
            assert_eq!(
                r.purchase_probability,
                trainer_rules.purchase_probability[i]
            );
            assert_eq!(r.churn_probability, trainer_rules.churn_probability[i]);
            assert_eq!(r.predicted_spend, trainer_rules.predicted_spend[i]);
            let k = Segment::COUNT;
            let best = crate::decide::argmax(&trainer_rules.segment_probs[i * k..(i + 1) * k])
                .and_then(Segment::from_index)
                .map(|s| s.name());
            assert_eq!(Some(r.segment.as_str()), best);
            assert_eq!(b.purchase_probability, trainer_btyd.purchase_probability[i]);
            assert_eq!(b.churn_probability, trainer_btyd.churn_probability[i]);
            assert_eq!(b.predicted_spend, trainer_btyd.predicted_spend[i]);
        }
    }
}
