//! The topics an instance needs, checked once at start: they exist, the
//! co-partitioned ones have the same partition count, and the changelog
//! and the current-membership topic are compacted.

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::consumer::Consumer;
use tracing::warn;

use super::{kafka, Pipeline, PipelineError};
use crate::telemetry::kafka_log::QuietContext;

impl Pipeline {
    /// Input topics, changelog and dead-letter topics exist, and the input
    /// topics and the changelog have the same number of partitions.
    /// Returns the input topics' partition count.
    pub(super) async fn check_topics(&self) -> Result<i32, PipelineError> {
        let consumer = self.consumer.clone();
        let md = self
            .watchdog
            .call("fetch_metadata", move |t| consumer.fetch_metadata(None, t))
            .await?
            .map_err(kafka("fetching cluster metadata"))?;
        let count = |name: &str| {
            md.topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map(|t| t.partitions().len())
        };
        let mut problems = Vec::new();
        let mut counts = BTreeMap::new();
        for t in self
            .cfg
            .input
            .topics
            .iter()
            .chain(std::iter::once(&self.cfg.state.changelog_topic))
        {
            match count(t) {
                Some(n) => {
                    counts.insert(t.clone(), n);
                }
                None => problems.push(format!("{t} does not exist")),
            }
        }
        if count(&self.cfg.dead_letter.topic).is_none() {
            problems.push(format!("{} does not exist", self.cfg.dead_letter.topic));
        }
        let risk_topic = &self.cfg.output.risk_topic;
        if !risk_topic.is_empty() && count(risk_topic).is_none() {
            problems.push(format!("{risk_topic} (output.risk_topic) does not exist"));
        }
        let privacy = &self.cfg.privacy;
        if !privacy.erasure_topic.is_empty() {
            match count(&privacy.erasure_topic) {
                Some(n) => {
                    counts.insert(privacy.erasure_topic.clone(), n);
                }
                None => problems.push(format!(
                    "{} (privacy.erasure_topic) does not exist",
                    privacy.erasure_topic
                )),
            }
        }
        if !privacy.audit_topic.is_empty() && count(&privacy.audit_topic).is_none() {
            problems.push(format!(
                "{} (privacy.audit_topic) does not exist",
                privacy.audit_topic
            ));
        }
        if !self.cfg.output.topic.contains("{segment}") && count(&self.cfg.output.topic).is_none() {
            problems.push(format!("{} does not exist", self.cfg.output.topic));
        }
        // A changelog that deletes instead of compacting loses state older
        // than its retention at the next restore; a current-membership topic
        // that does, customers who have not moved for that long.
        let current = &self.cfg.output.current_topic;
        let mut compacted = vec![(
            &self.cfg.state.changelog_topic,
            "state older than its retention would be lost at the next restore",
        )];
        if !current.is_empty() {
            match count(current) {
                Some(n) => {
                    counts.insert(current.clone(), n);
                    compacted.push((
                        current,
                        "customers whose segment has not changed for its retention would vanish from it",
                    ));
                }
                None => problems.push(format!(
                    "{current} (output.current_topic) does not exist; create it compacted \
                     with the input's partition count, or set output.current_topic = \"\""
                )),
            }
        }
        for (topic, why) in compacted {
            if !counts.contains_key(topic) {
                continue;
            }
            match self.cleanup_policy(topic).await {
                Ok(policy) if policy.split(',').any(|p| p.trim() == "compact") => {}
                Ok(policy) => problems.push(format!(
                    "{topic} must be compacted (cleanup.policy=compact), it has cleanup.policy={policy}: {why}"
                )),
                Err(e) => warn!(
                    topic = %topic,
                    error = %e,
                    "Could not read the topic's cleanup.policy (DescribeConfigs); make sure it is compact."
                ),
            }
        }
        let distinct: BTreeSet<usize> = counts.values().copied().collect();
        if distinct.len() > 1 {
            problems.push(format!(
                "input topics, the changelog, the current-membership and the erasure topic must \
                 have the same partition count (co-partitioning): {counts:?}"
            ));
        }
        if problems.is_empty() {
            let n = self
                .cfg
                .input
                .topics
                .first()
                .and_then(|t| counts.get(t))
                .copied()
                .unwrap_or(0);
            Ok(i32::try_from(n).unwrap_or(i32::MAX))
        } else {
            Err(PipelineError::Topics(format!(
                "{} (for the local broker: `make topics`)",
                problems.join("; ")
            )))
        }
    }

    /// A topic's `cleanup.policy` (DescribeConfigs).
    pub(super) async fn cleanup_policy(&self, topic: &str) -> Result<String, String> {
        use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
        let admin: AdminClient<QuietContext> = self
            .cfg
            .kafka
            .client_config()
            .map_err(|e| e.to_string())?
            .create_with_context(QuietContext)
            .map_err(|e| e.to_string())?;
        let topic = ResourceSpecifier::Topic(topic);
        let opts = AdminOptions::new().request_timeout(Some(self.watchdog.timeout()));
        let described = tokio::time::timeout(
            self.watchdog.timeout(),
            admin.describe_configs([&topic], &opts),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let resource = described
            .into_iter()
            .next()
            .ok_or("no answer")?
            .map_err(|e| e.to_string())?;
        Ok(resource
            .get("cleanup.policy")
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| "delete".into()))
    }
}
